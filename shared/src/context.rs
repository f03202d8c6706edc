//! `TaskContext`: what a running task knows about itself and how it reports progress
//! (Celery's `self.request` and `self.update_state`).
//!
//! Progress writes are coalesced: at most one write per task per interval. A report that comes
//! sooner is kept and written when the interval has passed (or merged into the final write), so
//! a tight loop of `progress` calls costs a few writes, and the last report is never lost.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;
use uuid::Uuid;

use crate::client::{Client, SendError, SendOptions};
use crate::registry::TaskError;
use crate::state::TaskState;
use crate::store::{ProgressUpdate, StateStore, StoreError};

/// Default minimum time between two progress writes of one task.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// The running task's identity and its line to the state store. Cheap to clone.
#[derive(Clone)]
pub struct TaskContext {
    inner: Arc<Inner>,
}

struct Inner {
    id: Uuid,
    name: String,
    retries: u32,
    parent_id: Option<Uuid>,
    root_id: Option<Uuid>,
    deadline: Option<Instant>,
    store: Arc<dyn StateStore>,
    client: Option<Client>,
    interval: Duration,
    reporter: Mutex<Reporter>,
}

/// How often `is_revoked` reads the store at most.
const REVOKE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Reporter {
    last_write: Option<Instant>,
    pending: Option<ProgressUpdate>,
    flush_scheduled: bool,
    finished: bool,
    revoke_checked: Option<(Instant, bool)>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("retries", &self.inner.retries)
            .finish_non_exhaustive()
    }
}

/// What a context is made from (the runtime builds it; tests may too).
#[derive(Debug, Clone)]
pub struct ContextParts {
    /// Task id.
    pub id: Uuid,
    /// Task name.
    pub name: String,
    /// Retries before this run.
    pub retries: u32,
    /// Parent task.
    pub parent_id: Option<Uuid>,
    /// Root task.
    pub root_id: Option<Uuid>,
    /// When this run must be over.
    pub deadline: Option<Instant>,
    /// Minimum time between two progress writes.
    pub progress_interval: Duration,
}

impl TaskContext {
    /// A context writing to `store`; `client` sends child tasks.
    pub fn new(parts: ContextParts, store: Arc<dyn StateStore>, client: Option<Client>) -> Self {
        TaskContext {
            inner: Arc::new(Inner {
                id: parts.id,
                name: parts.name,
                retries: parts.retries,
                parent_id: parts.parent_id,
                root_id: parts.root_id,
                deadline: parts.deadline,
                store,
                client,
                interval: parts.progress_interval,
                reporter: Mutex::new(Reporter::default()),
            }),
        }
    }

    /// The task id.
    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    /// The task name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How many times this task was retried before this run.
    pub fn retries(&self) -> u32 {
        self.inner.retries
    }

    /// The task that sent this one.
    pub fn parent_id(&self) -> Option<Uuid> {
        self.inner.parent_id
    }

    /// The first task of the chain (this task when it is the first).
    pub fn root_id(&self) -> Uuid {
        self.inner.root_id.unwrap_or(self.inner.id)
    }

    /// The producer client of this runtime: the manifest's queues and the task store.
    pub fn client(&self) -> Result<&Client, TaskError> {
        self.inner.client.as_ref().ok_or_else(|| {
            TaskError::permanent(
                "NoClient",
                "this runtime was started without a producer client (BatchHandler::with_client)",
            )
        })
    }

    /// Sends a child task (Celery's `apply_async` from inside a task): its parent is this task,
    /// its root this task's root. Returns the child's id.
    pub async fn send(&self, task: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<Uuid, TaskError> {
        let options =
            SendOptions { parent_id: Some(self.id()), root_id: Some(self.root_id()), ..SendOptions::default() };
        self.client()?.send(task, args, kwargs, options).await.map_err(|e| match e {
            SendError::Store(_) | SendError::Queue(_) => TaskError::retryable("SendFailed", e.to_string()),
            other => TaskError::permanent("SendFailed", other.to_string()),
        })
    }

    /// Whether an operator revoked this task while it runs (`taskbeat revoke ID`). A task that
    /// checks it can stop early; returning then is recorded as nothing more: the record stays
    /// REVOKED. Reads the store at most once a second.
    pub async fn is_revoked(&self) -> bool {
        if let Some((at, revoked)) = self.lock().revoke_checked
            && (revoked || at.elapsed() < REVOKE_CHECK_INTERVAL)
        {
            return revoked;
        }
        let revoked = match self.inner.store.get(self.inner.id).await {
            Ok(Some(record)) => record.state == TaskState::Revoked,
            _ => false,
        };
        self.lock().revoke_checked = Some((Instant::now(), revoked));
        revoked
    }

    /// Celery's `self.retry(countdown=..., max_retries=...)`: return the error it gives
    /// (`return Err(ctx.retry(...))`) and the task runs again, with the same id, after
    /// `countdown` (default: the task's `retry_delay`).
    pub fn retry(&self, reason: impl Into<String>, countdown: Option<Duration>, max_retries: Option<u32>) -> TaskError {
        TaskError::RetryRequested { info: crate::record::ErrorInfo::new("Retry", reason), countdown, max_retries }
    }

    /// Time left before this run is stopped.
    pub fn remaining(&self) -> Option<Duration> {
        self.inner.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Celery's `update_state(state, meta)`. Only PROGRESS and STARTED can be reported by a
    /// running task (the runtime writes the final state). A `progress` number and a `status`
    /// string in `meta` also fill the record's flat attributes.
    pub async fn update_state(&self, state: TaskState, meta: Value) -> Result<(), TaskError> {
        if !matches!(state, TaskState::Progress | TaskState::Started) {
            return Err(TaskError::permanent(
                "InvalidState",
                format!(
                    "update_state({state}) is not allowed: a running task reports PROGRESS; return a value or an error to finish"
                ),
            ));
        }
        let meta = match meta {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => Map::from_iter([("value".to_owned(), other)]),
        };
        let progress = meta.get("progress").and_then(Value::as_f64).map(|p| p.clamp(0.0, 100.0).round() as u8);
        let status = meta.get("status").and_then(Value::as_str).map(str::to_owned);
        self.report(ProgressUpdate { progress, status, meta: Some(meta) }).await;
        Ok(())
    }

    /// The seed's `update_state(state='PROGRESS', meta={'status': status, 'progress': percent})`.
    pub async fn progress(&self, percent: u8, status: impl Into<String>) {
        let status = status.into();
        let percent = percent.min(100);
        let meta = json!({ "status": status, "progress": percent });
        let meta = meta.as_object().cloned().unwrap_or_default();
        self.report(ProgressUpdate { progress: Some(percent), status: Some(status), meta: Some(meta) }).await;
    }

    async fn report(&self, update: ProgressUpdate) {
        let write_now = {
            let mut reporter = self.lock();
            if reporter.finished {
                return;
            }
            let now = Instant::now();
            let due = reporter.last_write.is_none_or(|t| now.duration_since(t) >= self.inner.interval);
            if due && !reporter.flush_scheduled {
                reporter.last_write = Some(now);
                reporter.pending = None;
                true
            } else {
                reporter.pending = Some(update.clone());
                if !reporter.flush_scheduled {
                    reporter.flush_scheduled = true;
                    let at = reporter.last_write.map_or(now, |t| t + self.inner.interval);
                    let ctx = self.clone();
                    tokio::spawn(async move { ctx.flush_at(at).await });
                }
                false
            }
        };
        if write_now {
            self.write(&update).await;
        }
    }

    async fn flush_at(&self, at: Instant) {
        tokio::time::sleep_until(at).await;
        let update = {
            let mut reporter = self.lock();
            reporter.flush_scheduled = false;
            if reporter.finished {
                return;
            }
            let Some(update) = reporter.pending.take() else { return };
            reporter.last_write = Some(Instant::now());
            update
        };
        self.write(&update).await;
    }

    async fn write(&self, update: &ProgressUpdate) {
        match self.inner.store.progress(self.inner.id, update).await {
            Ok(()) => {}
            // Finished meanwhile (a late flush): nothing to report.
            Err(StoreError::Terminal { .. }) => {}
            Err(e) => tracing::warn!(task_id = %self.inner.id, error = %e, "progress not recorded"),
        }
    }

    /// Ends reporting and hands back the last report not yet written, to merge into the final
    /// write. Called by the runtime when the body returns.
    pub fn finish_reporting(&self) -> Option<ProgressUpdate> {
        let mut reporter = self.lock();
        reporter.finished = true;
        reporter.pending.take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reporter> {
        // A poisoned lock only means a panic elsewhere while holding plain data; keep going.
        self.inner.reporter.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
