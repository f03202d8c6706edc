//! The SQS `TaskQueue` (aws-sdk-sqs). Queue URLs are resolved once and kept.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use chrono::Utc;
use tokio::sync::OnceCell;

use super::{
    MAX_DELAY, MoveMethod, MoveOutcome, OutgoingMessage, QueueDepth, QueueError, ReceivedMessage, TaskQueue,
    check_fifo, check_size, move_by_copy,
};
use crate::store::millis_to_time;

/// How often a running move task is looked at.
const MOVE_POLL: Duration = Duration::from_secs(1);
/// How long a redrive waits for SQS's move task before it says it goes on without us.
const MOVE_WAIT: Duration = Duration::from_secs(600);
/// Error codes with which a service says it does not do `StartMessageMoveTask` (for this
/// queue, or at all, as emulators).
const NOT_IMPLEMENTED_CODES: [&str; 6] = [
    "UnsupportedOperation",
    "AWS.SimpleQueueService.UnsupportedOperation",
    "InvalidAction",
    "UnknownOperationException",
    "NotImplemented",
    "NotImplementedException",
];

/// One SQS queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    name: String,
    url: OnceCell<String>,
    arn: OnceCell<String>,
    max_message_bytes: usize,
}

impl SqsQueue {
    /// The queue named `name`; its URL is looked up on first use.
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        SqsQueue {
            client,
            name: name.into(),
            url: OnceCell::new(),
            arn: OnceCell::new(),
            max_message_bytes: super::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// The queue at a known URL (as Lambda's configuration gives it).
    pub fn from_url(client: Client, url: impl Into<String>) -> Self {
        let url = url.into();
        let name = url.rsplit('/').next().unwrap_or(&url).to_owned();
        SqsQueue {
            client,
            name,
            url: OnceCell::new_with(Some(url)),
            arn: OnceCell::new(),
            max_message_bytes: super::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// The queue's URL.
    pub async fn url(&self) -> Result<&str, QueueError> {
        self.url
            .get_or_try_init(|| async {
                let out =
                    self.client.get_queue_url().queue_name(&self.name).send().await.map_err(|e| self.map_err(e))?;
                out.queue_url.ok_or_else(|| QueueError::NoSuchQueue(self.name.clone()))
            })
            .await
            .map(String::as_str)
    }

    /// The queue's ARN (SQS's move task names queues by ARN).
    pub async fn arn(&self) -> Result<&str, QueueError> {
        self.arn
            .get_or_try_init(|| async {
                let url = self.url().await?;
                let out = self
                    .client
                    .get_queue_attributes()
                    .queue_url(url)
                    .attribute_names(QueueAttributeName::QueueArn)
                    .send()
                    .await
                    .map_err(|e| self.map_err(e))?;
                out.attributes.and_then(|mut a| a.remove(&QueueAttributeName::QueueArn)).ok_or_else(|| {
                    QueueError::Backend { queue: self.name.clone(), message: "SQS gave no QueueArn".into() }
                })
            })
            .await
            .map(String::as_str)
    }

    /// Moves every message to `target` with SQS's own move task (`StartMessageMoveTask`) and
    /// waits for it to finish. `Ok(None)` when the service does not do move tasks (emulators;
    /// a queue it refuses to move from), so that the caller moves the messages itself.
    async fn move_with_move_task(&self, target: &SqsQueue) -> Result<Option<MoveOutcome>, QueueError> {
        let source_arn = self.arn().await?.to_owned();
        let destination_arn = target.arn().await?.to_owned();
        let started = self
            .client
            .start_message_move_task()
            .source_arn(&source_arn)
            .destination_arn(&destination_arn)
            .customize()
            // An emulator without move tasks answers 500: no point in asking three times.
            .config_override(
                aws_sdk_sqs::config::Builder::default()
                    .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await;
        if let Err(e) = &started
            && not_implemented(e)
        {
            tracing::info!(queue = %self.name, error = %aws_error_chain(e), "no SQS move task here; moving messages one by one");
            return Ok(None);
        }
        started.map_err(|e| self.map_err(e))?;
        let waited = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(MOVE_POLL).await;
            let listed = self
                .client
                .list_message_move_tasks()
                .source_arn(&source_arn)
                .max_results(1)
                .send()
                .await
                .map_err(|e| self.map_err(e))?;
            // The most recent task first: ours (a DLQ has one move task at a time).
            let Some(task) = listed.results.unwrap_or_default().into_iter().next() else { continue };
            match task.status.as_deref() {
                Some("COMPLETED") => {
                    let count = u64::try_from(task.approximate_number_of_messages_moved).unwrap_or(0);
                    return Ok(Some(MoveOutcome { method: MoveMethod::MessageMoveTask, moved: Vec::new(), count }));
                }
                Some(status @ ("FAILED" | "CANCELLING" | "CANCELLED")) => {
                    return Err(QueueError::Backend {
                        queue: self.name.clone(),
                        message: format!(
                            "SQS move task {status} after moving {} messages: {}",
                            task.approximate_number_of_messages_moved,
                            task.failure_reason.as_deref().unwrap_or("no reason given")
                        ),
                    });
                }
                _ if waited.elapsed() > MOVE_WAIT => {
                    return Err(QueueError::Backend {
                        queue: self.name.clone(),
                        message: format!(
                            "SQS move task still running after {} s ({} moved so far); it goes on: see the queue's \"DLQ redrive\" in the SQS console",
                            MOVE_WAIT.as_secs(),
                            task.approximate_number_of_messages_moved
                        ),
                    });
                }
                _ => {}
            }
        }
    }

    fn map_err<E, R>(&self, e: SdkError<E, R>) -> QueueError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = e.code().unwrap_or_default().to_owned();
        if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") {
            return QueueError::NoSuchQueue(self.name.clone());
        }
        if code.contains("Throttl") || code.contains("RequestThrottled") {
            return QueueError::Throttled(format!("{}: {}", self.name, code));
        }
        let message = match e.message() {
            Some(m) => format!("{code}: {m}"),
            None => aws_error_chain(&e),
        };
        QueueError::Backend { queue: self.name.clone(), message }
    }
}

/// Whether the service says it does not do this operation: a code saying so, 501, or an
/// answer that is not an AWS error at all (an emulator's 500 or 404 page).
fn not_implemented<E: ProvideErrorMetadata>(e: &SdkError<E, aws_sdk_sqs::config::http::HttpResponse>) -> bool {
    if e.code().is_some_and(|code| NOT_IMPLEMENTED_CODES.contains(&code)) {
        return true;
    }
    let status = e.raw_response().map(|r| r.status().as_u16());
    status == Some(501) || (matches!(status, Some(500 | 404)) && e.code().is_none_or(|c| c.is_empty() || c == "500"))
}

/// The whole chain of an SDK error, for messages where the service gave no code.
pub(crate) fn aws_error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[async_trait]
impl TaskQueue for SqsQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    fn is_fifo(&self) -> bool {
        self.name.ends_with(".fifo")
    }

    async fn send(&self, message: OutgoingMessage) -> Result<String, QueueError> {
        check_size(self, &message.body)?;
        check_fifo(self, &message)?;
        if message.delay > MAX_DELAY {
            return Err(QueueError::DelayTooLong(message.delay));
        }
        let url = self.url().await?;
        let mut request = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(message.body)
            .set_message_group_id(message.group_id.filter(|_| self.is_fifo()))
            .set_message_deduplication_id(message.deduplication_id.filter(|_| self.is_fifo()));
        if !message.delay.is_zero() {
            request = request.delay_seconds(i32::try_from(message.delay.as_secs()).unwrap_or(900));
        }
        for (key, value) in message.attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| QueueError::Backend { queue: self.name.clone(), message: e.to_string() })?;
            request = request.message_attributes(key, value);
        }
        let out = request.send().await.map_err(|e| self.map_err(e))?;
        Ok(out.message_id.unwrap_or_default())
    }

    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let url = self.url().await?;
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
            .visibility_timeout(i32::try_from(visibility.as_secs().max(1)).unwrap_or(i32::MAX))
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| self.map_err(e))?;
        let messages = out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let system = m.attributes.unwrap_or_default();
                let number = |name: MessageSystemAttributeName| -> Option<i64> { system.get(&name)?.parse().ok() };
                let attributes: BTreeMap<String, String> = m
                    .message_attributes
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v.string_value?)))
                    .collect();
                ReceivedMessage {
                    message_id: m.message_id.unwrap_or_default(),
                    receipt_handle: m.receipt_handle.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                    receive_count: number(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(1),
                    sent_at: number(MessageSystemAttributeName::SentTimestamp)
                        .map(millis_to_time)
                        .unwrap_or_else(Utc::now),
                    first_received_at: number(MessageSystemAttributeName::ApproximateFirstReceiveTimestamp)
                        .map(millis_to_time),
                    attributes,
                    group_id: system.get(&MessageSystemAttributeName::MessageGroupId).cloned(),
                }
            })
            .collect();
        Ok(messages)
    }

    async fn delete(&self, receipt_handles: &[String]) -> Result<(), QueueError> {
        let url = self.url().await?;
        for chunk in receipt_handles.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .map_err(|e| QueueError::Backend { queue: self.name.clone(), message: e.to_string() })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| self.map_err(e))?;
            if let Some(failed) = out.failed.first() {
                return Err(QueueError::Backend {
                    queue: self.name.clone(),
                    message: format!("delete failed: {}", failed.message.as_deref().unwrap_or(&failed.code)),
                });
            }
        }
        Ok(())
    }

    async fn change_visibility(&self, receipt_handle: &str, visibility: Duration) -> Result<(), QueueError> {
        let url = self.url().await?;
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(i32::try_from(visibility.as_secs()).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| self.map_err(e))?;
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let url = self.url().await?;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| self.map_err(e))?;
        let attributes: HashMap<QueueAttributeName, String> = out.attributes.unwrap_or_default();
        let count = |name: QueueAttributeName| attributes.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(QueueDepth {
            visible: count(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }

    async fn move_messages(&self, target: &dyn TaskQueue, ids: Option<&[String]>) -> Result<MoveOutcome, QueueError> {
        // SQS's move task moves everything; one message is moved by hand.
        if let (None, Some(target_sqs)) = (ids, target.as_any().downcast_ref::<SqsQueue>())
            && let Some(outcome) = self.move_with_move_task(target_sqs).await?
        {
            return Ok(outcome);
        }
        move_by_copy(self, target, ids).await
    }

    async fn purge(&self) -> Result<u64, QueueError> {
        let depth = self.depth().await?;
        let url = self.url().await?;
        self.client.purge_queue().queue_url(url).send().await.map_err(|e| {
            if e.code().is_some_and(|c| c.contains("PurgeQueueInProgress")) {
                QueueError::Backend {
                    queue: self.name.clone(),
                    message: "SQS allows one purge of a queue every 60 seconds; try again in a minute".into(),
                }
            } else {
                self.map_err(e)
            }
        })?;
        Ok(depth.visible + depth.in_flight + depth.delayed)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
