//! The batch handler: an `SqsEvent` in, an `SqsBatchResponse` out, as Lambda's SQS event source
//! mapping calls it. `taskbeat local` builds the same event from its queues and calls the same
//! code.
//!
//! Records run concurrently (bounded). Only records that should be delivered again are listed
//! in `batchItemFailures`: a retryable failure, a duplicate of a running task, a store outage.
//! A body that is not an envelope, or names a task this function does not have, goes to the
//! dead-letter queue at once with its reason (never retried); a panicking task fails only itself.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;
use tracing::{Instrument, info_span};

use crate::client::Client;
use crate::context::{ContextParts, DEFAULT_PROGRESS_INTERVAL, TaskContext};
use crate::envelope::Envelope;
use crate::queue::{OutgoingMessage, TaskQueue, dead_letter_attributes};
use crate::record::ErrorInfo;
use crate::registry::{Registry, TaskError};
use crate::state::TaskState;
use crate::store::{ClaimOutcome, ClaimRequest, Completion, StateStore, StoreError};

/// How the handler runs a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerOptions {
    /// Records of one batch running at once.
    pub concurrency: usize,
    /// Minimum time between two progress writes of one task.
    pub progress_interval: Duration,
    /// A run's time limit when the task sets none.
    pub default_time_limit: Duration,
    /// Stop a task this long before the function's deadline, to leave time to record it.
    pub safety_margin: Duration,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            concurrency: 10,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            default_time_limit: Duration::from_secs(300),
            safety_margin: Duration::from_secs(2),
        }
    }
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Done with: succeeded, failed for good, dead-lettered, or already finished. Delete it.
    Done,
    /// Deliver it again later (listed in `batchItemFailures`).
    HandBack(String),
}

/// Runs batches of task messages for one module.
#[derive(Debug, Clone)]
pub struct BatchHandler {
    registry: Arc<Registry>,
    store: Arc<dyn StateStore>,
    dead_letters: Arc<dyn TaskQueue>,
    queue: String,
    options: HandlerOptions,
    client: Option<Client>,
}

impl BatchHandler {
    /// A handler for `registry`'s tasks arriving on `queue`, recording in `store`, dead-lettering
    /// to `dead_letters`.
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<dyn StateStore>,
        dead_letters: Arc<dyn TaskQueue>,
        queue: impl Into<String>,
        options: HandlerOptions,
    ) -> Self {
        BatchHandler { registry, store, dead_letters, queue: queue.into(), options, client: None }
    }

    /// Lets tasks send child tasks and read the manifest's queues (`ctx.send`, `ctx.client`).
    pub fn with_client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The module's registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Handles one batch. `deadline` is when the function will be stopped (Lambda's), if any.
    pub async fn handle(&self, event: SqsEvent, deadline: Option<Instant>) -> SqsBatchResponse {
        let started = Instant::now();
        let total = event.records.len();
        let outcomes: Vec<(String, RecordOutcome)> = futures::stream::iter(event.records)
            .map(|record| async move {
                let message_id = record.message_id.clone().unwrap_or_default();
                let span = info_span!("record", message_id = %message_id, task_id = tracing::field::Empty, task = tracing::field::Empty);
                let outcome = self.process(&record, deadline).instrument(span).await;
                (message_id, outcome)
            })
            .buffer_unordered(self.options.concurrency.max(1))
            .collect()
            .await;
        let mut response = SqsBatchResponse::default();
        for (message_id, outcome) in &outcomes {
            if let RecordOutcome::HandBack(reason) = outcome {
                tracing::info!(message_id = %message_id, reason = %reason, "record handed back for redelivery");
                response.add_failure(message_id.clone());
            }
        }
        tracing::info!(
            records = total,
            handed_back = response.batch_item_failures.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "batch done"
        );
        response
    }

    /// Handles one record.
    pub async fn process(&self, record: &SqsMessage, deadline: Option<Instant>) -> RecordOutcome {
        let body = record.body.as_deref().unwrap_or_default();
        let envelope = match Envelope::parse(body) {
            Ok(envelope) => envelope,
            Err(e) => {
                let salvaged = Envelope::salvage_id(body);
                let reason = DeadLetterReason { full: format!("malformed message: {e}"), loggable: e.summary() };
                return self.dead_letter(record, reason, "MalformedMessage", salvaged).await;
            }
        };
        let span = tracing::Span::current();
        span.record("task_id", tracing::field::display(envelope.id));
        span.record("task", envelope.task.as_str());
        let Some(spec) = self.registry.get(&envelope.task) else {
            let known: Vec<&str> = self.registry.names().collect();
            let full = format!(
                "unknown task `{}`: module `{}` has {}; route it to the module that has it",
                envelope.task,
                self.registry.module(),
                known.join(", ")
            );
            let reason = DeadLetterReason { loggable: full.clone(), full };
            let task = Some((envelope.id, Some(envelope.task.clone())));
            return self.dead_letter(record, reason, "UnknownTask", task).await;
        };

        if let Some(expires) = envelope.expires.filter(|e| *e <= Utc::now()) {
            let mut completion = Completion::new(envelope.id, &envelope.task, &self.queue, TaskState::Revoked);
            completion.error = Some(ErrorInfo::new("Expired", format!("expired at {expires} before it ran")));
            tracing::info!(transition = "REVOKED", reason = "expired", "task not run");
            return self.record_completion(&completion).await;
        }

        let options = spec.options();
        let time_limit = options.time_limit.unwrap_or(self.options.default_time_limit);
        let now = Instant::now();
        let run_until = match deadline {
            Some(deadline) => (now + time_limit).min(deadline.checked_sub(self.options.safety_margin).unwrap_or(now)),
            None => now + time_limit,
        };
        let lease = run_until.saturating_duration_since(now) + self.options.safety_margin;
        let claim = ClaimRequest {
            id: envelope.id,
            task: envelope.task.clone(),
            queue: self.queue.clone(),
            args: envelope.args.clone(),
            kwargs: envelope.kwargs.clone(),
            retries: envelope.retries,
            parent_id: envelope.parent_id,
            root_id: envelope.root_id,
            lease: chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(300)),
        };
        let claimed = match self.store.claim(&claim).await {
            Ok(ClaimOutcome::Claimed(record)) => record,
            Ok(ClaimOutcome::Busy { lease_until }) => {
                return RecordOutcome::HandBack(format!("task is running elsewhere (lease until {lease_until})"));
            }
            Ok(ClaimOutcome::Finished(state)) => {
                tracing::info!(state = %state, "duplicate delivery of a finished task acknowledged");
                return RecordOutcome::Done;
            }
            Err(e) => return RecordOutcome::HandBack(format!("claim failed: {e}")),
        };
        tracing::info!(transition = "STARTED", retries = claimed.retries, "task started");

        let ctx = TaskContext::new(
            ContextParts {
                id: envelope.id,
                name: envelope.task.clone(),
                retries: claimed.retries,
                parent_id: envelope.parent_id,
                root_id: envelope.root_id,
                deadline: Some(run_until),
                progress_interval: self.options.progress_interval,
            },
            self.store.clone(),
            self.client.clone(),
        );
        let started = Instant::now();
        let body = AssertUnwindSafe(spec.call(ctx.clone(), envelope.args, envelope.kwargs)).catch_unwind();
        let result = match tokio::time::timeout_at(run_until, body).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(TaskError::permanent("panic", panic_message(panic.as_ref()))),
            Err(_) => Err(TaskError::permanent(
                "TimeLimitExceeded",
                format!(
                    "stopped after {:.1} s: over its time limit or the function's remaining time",
                    started.elapsed().as_secs_f64()
                ),
            )),
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let mut completion = Completion::new(envelope.id, &envelope.task, &self.queue, TaskState::Success);
        completion.last_progress = ctx.finish_reporting();
        let hand_back = match result {
            Ok(value) => {
                completion.result = Some(value);
                None
            }
            Err(error) if error.is_retryable() && claimed.retries < options.max_retries => {
                completion.state = TaskState::Retry;
                completion.retries = Some(claimed.retries + 1);
                completion.error = Some(error.info().clone());
                // The kind only: a task's message may quote its arguments, and logs never carry them.
                Some(format!("retry {} of {} ({})", claimed.retries + 1, options.max_retries, error.info().kind))
            }
            Err(error) => {
                completion.state = TaskState::Failure;
                completion.error = Some(error.info().clone());
                None
            }
        };
        tracing::info!(transition = %completion.state, duration_ms, error = completion.error.as_ref().map(|e| e.kind.as_str()), "task finished");
        match (self.record_completion(&completion).await, hand_back) {
            (RecordOutcome::Done, Some(reason)) => RecordOutcome::HandBack(reason),
            (outcome, _) => outcome,
        }
    }

    async fn record_completion(&self, completion: &Completion) -> RecordOutcome {
        match self.store.complete(completion).await {
            Ok(()) => RecordOutcome::Done,
            Err(StoreError::Terminal { state, .. }) => {
                tracing::info!(state = %state, "already finished; the record keeps its state");
                RecordOutcome::Done
            }
            Err(e) => RecordOutcome::HandBack(format!("could not record {}: {e}", completion.state)),
        }
    }

    async fn dead_letter(
        &self,
        record: &SqsMessage,
        reason: DeadLetterReason,
        kind: &str,
        task: Option<(uuid::Uuid, Option<String>)>,
    ) -> RecordOutcome {
        tracing::warn!(reason = %reason.loggable, "dead-lettering record");
        let mut attributes: BTreeMap<String, String> = dead_letter_attributes(&reason.full, &self.queue);
        for (name, value) in &record.message_attributes {
            if let Some(text) = &value.string_value {
                attributes.entry(name.clone()).or_insert_with(|| text.clone());
            }
        }
        let message =
            OutgoingMessage { body: record.body.clone().unwrap_or_default(), delay: Duration::ZERO, attributes };
        if let Err(e) = self.dead_letters.send(message).await {
            // Not lost: handed back, the queue's redrive policy moves it after its max receives.
            return RecordOutcome::HandBack(format!("dead-letter queue unavailable ({e}); {}", reason.loggable));
        }
        if let Some((id, task)) = task {
            let task = task.unwrap_or_else(|| "(unknown)".to_owned());
            let mut completion = Completion::new(id, &task, &self.queue, TaskState::Failure);
            completion.error = Some(ErrorInfo::new(kind, reason.full));
            if let Err(e) = self.store.complete(&completion).await {
                tracing::warn!(error = %e, "dead letter's failure not recorded");
            }
        }
        RecordOutcome::Done
    }
}

/// Why a record is dead-lettered: in full for the dead letter and the record, and without any
/// value from the body for the logs.
struct DeadLetterReason {
    full: String,
    loggable: String,
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the task panicked".to_owned());
    format!("task panicked: {text}")
}
