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
use serde_json::Value;
use tokio::time::Instant;
use tracing::{Instrument, info_span};

use crate::client::Client;
use crate::context::{ContextParts, DEFAULT_PROGRESS_INTERVAL, TaskContext};
use crate::event::MESSAGE_GROUP_ID;
use crate::metrics::{BatchMetrics, MetricsSink, Outcome, RecordTally};
use crate::queue::{OutgoingMessage, TaskQueue, dead_letter_attributes};
use crate::record::{ErrorInfo, TaskRecord};
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
    source: Option<Arc<dyn TaskQueue>>,
    metrics: Option<MetricsSink>,
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
        BatchHandler {
            registry,
            store,
            dead_letters,
            queue: queue.into(),
            options,
            client: None,
            source: None,
            metrics: None,
        }
    }

    /// Writes each batch's metrics (CloudWatch Embedded Metric Format lines) to `sink`.
    pub fn with_metrics(mut self, sink: MetricsSink) -> Self {
        self.metrics = Some(sink);
        self
    }

    /// Lets tasks send child tasks and read the manifest's queues (`ctx.send`, `ctx.client`).
    pub fn with_client(mut self, client: Client) -> Self {
        self.source = client.backend().queue(&self.queue).map(|pair| pair.queue.clone());
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
        let outcomes: Vec<(String, RecordOutcome, RecordTally)> = futures::stream::iter(in_groups(event.records))
            .map(|group| self.process_group(group, deadline))
            .buffer_unordered(self.options.concurrency.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut response = SqsBatchResponse::default();
        let mut metrics = BatchMetrics::new(self.registry.module());
        for (message_id, outcome, tally) in &outcomes {
            if let RecordOutcome::HandBack(reason) = outcome {
                tracing::info!(message_id = %message_id, reason = %reason, "record handed back for redelivery");
                response.add_failure(message_id.clone());
            }
            metrics.add(tally, matches!(outcome, RecordOutcome::HandBack(_)));
        }
        tracing::info!(
            records = total,
            handed_back = response.batch_item_failures.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "batch done"
        );
        if let Some(sink) = &self.metrics {
            sink.emit(&metrics);
        }
        response
    }

    /// Handles the records of one FIFO message group in order; once one is handed back, the
    /// rest of its group is handed back unrun, so the group's order holds. A record of a
    /// standard queue is a group of its own.
    async fn process_group(
        &self,
        group: Vec<SqsMessage>,
        deadline: Option<Instant>,
    ) -> Vec<(String, RecordOutcome, RecordTally)> {
        let mut outcomes = Vec::with_capacity(group.len());
        let mut blocked = false;
        for record in group {
            let message_id = record.message_id.clone().unwrap_or_default();
            if blocked {
                let outcome = RecordOutcome::HandBack("an earlier message of its group was handed back".into());
                outcomes.push((message_id, outcome, RecordTally::default()));
                continue;
            }
            let span = info_span!("record", message_id = %message_id, task_id = tracing::field::Empty, task = tracing::field::Empty);
            let mut tally = RecordTally::default();
            let outcome = self.process_tallied(&record, deadline, &mut tally).instrument(span).await;
            blocked = matches!(outcome, RecordOutcome::HandBack(_));
            outcomes.push((message_id, outcome, tally));
        }
        outcomes
    }

    /// After a stop that abandoned running tasks (their futures dropped): releases their claims
    /// so that they run again as soon as their messages are received, instead of waiting out
    /// the lease. The records say RETRY with why, keeping their retry count.
    pub async fn release_interrupted(&self, messages: &[crate::queue::ReceivedMessage]) {
        for message in messages {
            let Ok(incoming) = crate::celery::decode(&message.body) else { continue };
            let envelope = incoming.into_envelope();
            let mut completion = Completion::new(envelope.id, &envelope.task, &self.queue, TaskState::Retry);
            completion.error =
                Some(ErrorInfo::new("Interrupted", "the worker stopped before the task finished; it runs again"));
            match self.store.get(envelope.id).await {
                Ok(Some(record)) if matches!(record.state, TaskState::Started | TaskState::Progress) => {
                    if let Err(e) = self.store.complete(&completion).await {
                        tracing::warn!(task_id = %envelope.id, error = %e, "could not release an interrupted task");
                    }
                }
                _ => {}
            }
        }
    }

    /// Handles one record.
    pub async fn process(&self, record: &SqsMessage, deadline: Option<Instant>) -> RecordOutcome {
        self.process_tallied(record, deadline, &mut RecordTally::default()).await
    }

    /// Handles one record, noting in `tally` what its batch's metrics count.
    async fn process_tallied(
        &self,
        record: &SqsMessage,
        deadline: Option<Instant>,
        tally: &mut RecordTally,
    ) -> RecordOutcome {
        let body = record.body.as_deref().unwrap_or_default();
        // taskbeat's envelope, or a Celery message from kombu's SQS transport.
        let incoming = match crate::celery::decode(body) {
            Ok(incoming) => incoming,
            Err(e) => {
                let first_write = crate::celery::salvage_id(body).map(|(id, task)| {
                    Completion::new(id, task.as_deref().unwrap_or("(unknown)"), &self.queue, TaskState::Failure)
                });
                let reason = DeadLetterReason { full: format!("malformed message: {e}"), loggable: e.summary() };
                let outcome = self.dead_letter(record, reason, "MalformedMessage", first_write).await;
                return tallied(outcome, tally, Outcome::DeadLettered);
            }
        };
        let message_time_limit = incoming.time_limit();
        let envelope = incoming.into_envelope();
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
            let first_write = Completion::of_envelope(&envelope, &self.queue, TaskState::Failure);
            return tallied(
                self.dead_letter(record, reason, "UnknownTask", Some(first_write)).await,
                tally,
                Outcome::DeadLettered,
            );
        };
        // A name the module registered: safe as a metric dimension (bounded).
        tally.task = Some(envelope.task.clone());

        if let Some(expires) = envelope.expires.filter(|e| *e <= Utc::now()) {
            let mut completion = Completion::of_envelope(&envelope, &self.queue, TaskState::Revoked);
            completion.error =
                Some(ErrorInfo::new("Expired", format!("expired at {} before it ran", crate::record::iso(expires))));
            tracing::info!(transition = "REVOKED", reason = "expired", "task not run");
            return tallied(self.record_completion(&completion).await, tally, Outcome::Revoked);
        }
        if let Some(eta) = envelope.eta {
            // Not due yet (an eta or countdown beyond what one SQS delay holds): back to the
            // queue until it is, without claiming it.
            let wait = (eta - Utc::now()).to_std().unwrap_or_default();
            if wait > Duration::from_millis(500) {
                return self.wait_until_due(record, wait, eta).await;
            }
            // Due within half a second (below what a visibility change can say): wait here, so
            // a countdown never runs early.
            tokio::time::sleep(wait).await;
        }

        let options = spec.options();
        let time_limit = message_time_limit.or(options.time_limit).unwrap_or(self.options.default_time_limit);
        let now = Instant::now();
        // The margin to record the end before the deadline: the configured one, but never more
        // than a tenth of the time left (a 2 s function keeps 0.2 s, not all of it).
        let margin = deadline.map_or(self.options.safety_margin, |d| {
            self.options.safety_margin.min(d.saturating_duration_since(now) / 10)
        });
        let function_end = deadline.map(|d| d.checked_sub(margin).unwrap_or(now));
        let run_until = match function_end {
            Some(end) => (now + time_limit).min(end),
            None => now + time_limit,
        };
        // Stopped by the function's remaining time rather than the task's own limit: not the
        // task's fault, so it is retried.
        let cut_by_function = function_end.is_some_and(|end| end < now + time_limit);
        let lease = run_until.saturating_duration_since(now) + margin;
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
                tracing::info!(state = %state, "delivery of a finished or revoked task acknowledged without running");
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
            Err(_) if cut_by_function => Err(TaskError::retryable(
                "FunctionTimeout",
                format!("stopped after {:.1} s, before the function's deadline", started.elapsed().as_secs_f64()),
            )),
            Err(_) => Err(TaskError::permanent(
                "TimeLimitExceeded",
                format!(
                    "stopped after {:.1} s: over its time limit of {time_limit:?}",
                    started.elapsed().as_secs_f64()
                ),
            )),
        };
        let result = result.and_then(|value| check_result_size(&claimed, value));
        let ran_for = started.elapsed();
        tally.duration = Some(ran_for);
        let duration_ms = ran_for.as_millis() as u64;
        let mut completion = Completion::new(envelope.id, &envelope.task, &self.queue, TaskState::Success);
        completion.last_progress = ctx.finish_reporting();
        let mut retry_in = None;
        match result {
            Ok(value) => completion.result = Some(value),
            Err(error) => {
                completion.error = Some(error.info().clone());
                match options.retry_delay_for(&error, claimed.retries) {
                    Some(delay) => {
                        completion.state = TaskState::Retry;
                        completion.retries = Some(claimed.retries + 1);
                        retry_in = Some(delay);
                    }
                    None => completion.state = TaskState::Failure,
                }
            }
        }
        tracing::info!(
            transition = %completion.state,
            duration_ms,
            error = completion.error.as_ref().map(|e| e.kind.as_str()),
            retry_in_ms = retry_in.map(|d| d.as_millis() as u64),
            "task finished"
        );
        let mut recorded = self.record_completion(&completion).await;
        if let Some(outcome) = Outcome::of_run(completion.state) {
            recorded = tallied(recorded, tally, outcome);
        }
        match (recorded, retry_in) {
            (RecordOutcome::Done, Some(delay)) => {
                self.delay_redelivery(record, delay).await;
                // The kind only: a task's message may quote its arguments, and logs never carry them.
                let kind = completion.error.as_ref().map_or("", |e| e.kind.as_str());
                RecordOutcome::HandBack(format!("retry {} in {delay:?} ({kind})", claimed.retries + 1))
            }
            (outcome, _) => outcome,
        }
    }

    /// A message not due yet: hand it back hidden until due (at most 12 h). Each hand-back
    /// counts as a receive, so after one a fresh copy replaces it (receive count back to
    /// zero): a far eta never reaches the queue's max receive count and the DLQ.
    async fn wait_until_due(&self, record: &SqsMessage, wait: Duration, eta: chrono::DateTime<Utc>) -> RecordOutcome {
        let received: u32 = record.attributes.get("ApproximateReceiveCount").and_then(|n| n.parse().ok()).unwrap_or(1);
        if let Some(source) = self.source.as_ref().filter(|s| received > 1 && !s.is_fifo()) {
            let attributes = record
                .message_attributes
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.string_value.clone()?)))
                .collect();
            let copy = OutgoingMessage {
                body: record.body.clone().unwrap_or_default(),
                delay: wait.min(crate::queue::MAX_DELAY),
                attributes,
                ..OutgoingMessage::default()
            };
            match source.send(copy).await {
                Ok(_) => return RecordOutcome::Done,
                Err(e) => tracing::warn!(error = %e, "could not re-queue a task that is not due; handing it back"),
            }
        }
        self.delay_redelivery(record, wait).await;
        RecordOutcome::HandBack(format!("not due until {}", crate::record::iso(eta)))
    }

    /// Keeps a handed-back message hidden for `delay` (at most SQS's 12 h visibility), so that
    /// SQS delivers it again then: the retry keeps the task's id and message.
    async fn delay_redelivery(&self, record: &SqsMessage, delay: Duration) {
        let (Some(source), Some(receipt)) = (&self.source, record.receipt_handle.as_deref()) else { return };
        let delay = delay.min(MAX_VISIBILITY);
        if let Err(e) = source.change_visibility(receipt, delay).await {
            // Still redelivered, after the queue's own visibility timeout.
            tracing::warn!(error = %e, "could not set the redelivery delay");
        }
    }

    /// Writes the end of a run. A passing store failure (throttling, a blip) is retried a few
    /// times here, since handing the message back would run the body again.
    async fn record_completion(&self, completion: &Completion) -> RecordOutcome {
        let mut pause = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.store.complete(completion).await {
                Ok(()) => return RecordOutcome::Done,
                Err(StoreError::Terminal { state, .. }) => {
                    tracing::info!(state = %state, "already finished; the record keeps its state");
                    return RecordOutcome::Done;
                }
                Err(e @ (StoreError::Throttled(_) | StoreError::Backend(_))) if attempt < COMPLETION_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "recording the end of a run failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 4;
                }
                Err(e) => return RecordOutcome::HandBack(format!("could not record {}: {e}", completion.state)),
            }
        }
    }

    async fn dead_letter(
        &self,
        record: &SqsMessage,
        reason: DeadLetterReason,
        kind: &str,
        first_write: Option<Completion>,
    ) -> RecordOutcome {
        // The transition is the task record's, written below when the body carried a task id.
        tracing::warn!(
            reason = %reason.loggable,
            error = kind,
            transition = first_write.as_ref().map(|_| TaskState::Failure.as_str()),
            "dead-lettering record"
        );
        let mut attributes: BTreeMap<String, String> = dead_letter_attributes(&reason.full, &self.queue);
        for (name, value) in &record.message_attributes {
            if let Some(text) = &value.string_value {
                attributes.entry(name.clone()).or_insert_with(|| text.clone());
            }
        }
        let message = OutgoingMessage {
            body: record.body.clone().unwrap_or_default(),
            delay: Duration::ZERO,
            attributes,
            // A FIFO queue's DLQ is FIFO too: keep the group, and deduplicate by message id.
            group_id: Some(record.attributes.get(MESSAGE_GROUP_ID).cloned().unwrap_or_else(|| "dead-letters".into())),
            deduplication_id: record.message_id.clone(),
        };
        if let Err(e) = self.dead_letters.send(message).await {
            // Not lost: handed back, the queue's redrive policy moves it after its max receives.
            return RecordOutcome::HandBack(format!("dead-letter queue unavailable ({e}); {}", reason.loggable));
        }
        if let Some(mut completion) = first_write {
            completion.error = Some(ErrorInfo::new(kind, reason.full));
            if let Err(e) = self.store.complete(&completion).await {
                tracing::warn!(error = %e, "dead letter's failure not recorded");
            }
        }
        RecordOutcome::Done
    }
}

/// Notes `what` in the record's tally when the record is done with (a record handed back is
/// counted as that instead).
fn tallied(outcome: RecordOutcome, tally: &mut RecordTally, what: Outcome) -> RecordOutcome {
    if outcome == RecordOutcome::Done {
        tally.outcome = Some(what);
    }
    outcome
}

/// Why a record is dead-lettered: in full for the dead letter and the record, and without any
/// value from the body for the logs.
struct DeadLetterReason {
    full: String,
    loggable: String,
}

/// The batch's records by FIFO message group, in arrival order; records without a group (a
/// standard queue) each form their own.
fn in_groups(records: Vec<SqsMessage>) -> Vec<Vec<SqsMessage>> {
    let mut groups: Vec<Vec<SqsMessage>> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for record in records {
        match record.attributes.get(MESSAGE_GROUP_ID).cloned() {
            Some(group) => match index.get(&group) {
                Some(&at) => groups[at].push(record),
                None => {
                    index.insert(group, groups.len());
                    groups.push(vec![record]);
                }
            },
            None => groups.push(vec![record]),
        }
    }
    groups
}

/// Tries at writing the end of a run before the message is handed back.
const COMPLETION_ATTEMPTS: u32 = 4;

/// The longest a received SQS message can stay hidden.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// The most a task record holds (DynamoDB's item limit; the embedded store keeps the same).
pub const MAX_RECORD_BYTES: usize = 400 * 1024;

/// Refuses a result whose record would not fit, rather than lose it.
fn check_result_size(record: &TaskRecord, value: Value) -> Result<Value, TaskError> {
    let others = serde_json::to_string(record).map_or(0, |t| t.len());
    let result = serde_json::to_string(&value).map_or(0, |t| t.len());
    if others + result > MAX_RECORD_BYTES {
        return Err(TaskError::permanent(
            "ResultTooLarge",
            format!(
                "result too large: {result} bytes, and the task record holds at most {MAX_RECORD_BYTES} bytes in all \
                 ({others} taken by the rest of the record); store large results elsewhere (S3) and return a reference"
            ),
        ));
    }
    Ok(value)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the task panicked".to_owned());
    format!("task panicked: {text}")
}
