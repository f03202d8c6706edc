//! The producer client: what `send_task` / `apply_async` were. Routes by the manifest, checks
//! the size before writing anything, records PENDING, sends the envelope, returns the id.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::backend::Backend;
use crate::envelope::Envelope;
use crate::manifest::Manifest;
use crate::queue::{MAX_DELAY, OutgoingMessage, QueueError, check_size};
use crate::record::{ErrorInfo, TaskRecord};
use crate::state::TaskState;
use crate::store::{Completion, StoreError};

/// Why a send did not happen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// The target queue is not in the manifest.
    #[error(
        "queue `{queue}` is not in the manifest (queues: {known}); add a module consuming it, or fix the route (or the queue asked for)"
    )]
    UnknownQueue {
        /// Requested queue.
        queue: String,
        /// The manifest's queues.
        known: String,
    },
    /// Over the queue's size limit (nothing was written).
    #[error(transparent)]
    TooLarge(QueueError),
    /// A countdown or eta for a FIFO queue.
    #[error(
        "queue `{0}` is FIFO and cannot delay a message: drop the countdown/eta, or route the task to a standard queue"
    )]
    FifoDelay(String),
    /// Both a countdown and an eta.
    #[error("give a countdown or an eta, not both")]
    CountdownAndEta,
    /// The state store failed (nothing was sent).
    #[error("could not record the task")]
    Store(#[from] StoreError),
    /// The queue failed (the record says FAILURE).
    #[error("could not send the task: {0}")]
    Queue(QueueError),
}

/// Options of one send (Celery's `apply_async` options).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendOptions {
    /// Queue to use instead of the route's.
    pub queue: Option<String>,
    /// Use this id instead of a new one.
    pub task_id: Option<Uuid>,
    /// Delay before it can run (negative: now).
    pub countdown: Option<chrono::Duration>,
    /// Do not run before this time (past: now).
    pub eta: Option<DateTime<Utc>>,
    /// Do not run after this time.
    pub expires: Option<DateTime<Utc>>,
    /// The task sending this one.
    pub parent_id: Option<Uuid>,
    /// The first task of the chain.
    pub root_id: Option<Uuid>,
    /// FIFO queues: the message group, in which order is kept (default: the task name).
    pub group_id: Option<String>,
}

/// Sends tasks.
#[derive(Debug, Clone)]
pub struct Client {
    manifest: Arc<Manifest>,
    backend: Backend,
    origin: String,
}

impl Client {
    /// A client on a backend; `origin` tells operators who sent (a host, a service, `cli`).
    pub fn new(manifest: Arc<Manifest>, backend: Backend, origin: impl Into<String>) -> Self {
        Client { manifest, backend, origin: origin.into() }
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Sends `task` with `args` and `kwargs`; returns the task id.
    pub async fn send(
        &self,
        task: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Result<Uuid, SendError> {
        let queue_name = options.queue.clone().unwrap_or_else(|| self.manifest.route(task).to_owned());
        let pair = self.backend.queue(&queue_name).ok_or_else(|| SendError::UnknownQueue {
            queue: queue_name.clone(),
            known: self.manifest.queue_names().join(", "),
        })?;
        let mut envelope = Envelope::new(task, args, kwargs);
        let now = envelope.sent_at.unwrap_or_else(Utc::now);
        let due = match (options.countdown, options.eta) {
            (Some(_), Some(_)) => return Err(SendError::CountdownAndEta),
            (Some(countdown), None) => Some(now + countdown),
            (None, eta) => eta,
        }
        .filter(|due| *due > now);
        // One SQS delay holds 900 s; a later task carries its eta and is re-delayed until due.
        let delay = due.map_or(Duration::ZERO, |due| (due - now).to_std().unwrap_or_default().min(MAX_DELAY));
        if let Some(id) = options.task_id {
            envelope.id = id;
        }
        envelope.expires = options.expires;
        envelope.parent_id = options.parent_id;
        envelope.root_id = options.root_id.or(options.parent_id);
        envelope.origin = Some(self.origin.clone());
        envelope.eta = due;
        let body = envelope.to_body();
        check_size(pair.queue.as_ref(), &body).map_err(SendError::TooLarge)?;

        let mut message = OutgoingMessage { body, delay, ..Default::default() };
        if pair.queue.is_fifo() {
            if due.is_some() {
                return Err(SendError::FifoDelay(queue_name));
            }
            // Order is kept per group; the task id makes a second send of it within five
            // minutes a no-op.
            message.group_id = Some(options.group_id.clone().unwrap_or_else(|| task.to_owned()));
            message.deduplication_id = Some(envelope.id.to_string());
        }

        self.backend.store.create(&TaskRecord::pending(&envelope, &queue_name)).await?;

        if let Err(e) = pair.queue.send(message).await {
            // Say so in the record rather than leave it PENDING forever.
            let mut completion = Completion::new(envelope.id, task, &queue_name, TaskState::Failure);
            completion.error = Some(ErrorInfo::new("SendFailed", e.to_string()));
            let _ = self.backend.store.complete(&completion).await;
            return Err(SendError::Queue(e));
        }
        tracing::debug!(task_id = %envelope.id, task, queue = %queue_name, "task sent");
        Ok(envelope.id)
    }
}
