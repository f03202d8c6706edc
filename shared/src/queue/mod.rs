//! `TaskQueue`: where task messages wait. SQS in AWS, SQLite in `taskbeat local`, with SQS's
//! semantics either way (visibility timeout, receive count, redrive to a DLQ, per-message delay).

pub mod sqlite;
pub mod sqs;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// SQS's longest per-message delay.
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// SQS's default (and classic) largest message body, in bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 262_144;
/// The message attribute carrying why a message was dead-lettered.
pub const REASON_ATTRIBUTE: &str = "taskbeat-dead-letter-reason";
/// The message attribute naming the queue a dead letter came from.
pub const SOURCE_QUEUE_ATTRIBUTE: &str = "taskbeat-source-queue";

/// What went wrong in a queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The body is over the queue's size limit; nothing was sent.
    #[error(
        "message of {bytes} bytes is over queue `{queue}`'s limit of {limit} bytes; send a reference (an S3 key, a database id) instead of the data"
    )]
    TooLarge {
        /// Queue name.
        queue: String,
        /// Body size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The delay is over SQS's 900 s.
    #[error("delay of {0:?} is over the queue's maximum of 900 s")]
    DelayTooLong(Duration),
    /// A FIFO queue cannot delay one message, and needs a message group.
    #[error("FIFO queue `{queue}`: {message}")]
    Fifo {
        /// Queue name.
        queue: String,
        /// What is wrong.
        message: String,
    },
    /// The queue does not exist.
    #[error(
        "queue `{0}` does not exist: deploy the infrastructure, or on an emulator run `taskbeat --aws local --create-resources`; check the manifest's project name"
    )]
    NoSuchQueue(String),
    /// The backend asked us to slow down.
    #[error("queue throttled: {0}")]
    Throttled(String),
    /// The backend failed.
    #[error("queue `{queue}` failed: {message}")]
    Backend {
        /// Queue name.
        queue: String,
        /// What failed.
        message: String,
    },
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The body (a JSON envelope).
    pub body: String,
    /// Deliver no sooner than this (at most [`MAX_DELAY`]).
    pub delay: Duration,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
    /// FIFO queues: the message group (order is kept within a group).
    pub group_id: Option<String>,
    /// FIFO queues: a second send with the same id within five minutes is dropped.
    pub deduplication_id: Option<String>,
}

impl OutgoingMessage {
    /// A message with a body and nothing else.
    pub fn new(body: impl Into<String>) -> Self {
        OutgoingMessage { body: body.into(), ..Default::default() }
    }
}

/// A received message, as SQS hands it to a consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The queue's id of the message.
    pub message_id: String,
    /// The handle of this receive (delete and visibility changes need it).
    pub receipt_handle: String,
    /// The body.
    pub body: String,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
    /// When it was first sent.
    pub sent_at: DateTime<Utc>,
    /// When it was first received.
    pub first_received_at: Option<DateTime<Utc>>,
    /// String message attributes.
    pub attributes: BTreeMap<String, String>,
    /// FIFO queues: its message group.
    pub group_id: Option<String>,
}

/// How many messages a queue holds, by condition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Ready to be received.
    pub visible: u64,
    /// Received and not yet deleted.
    pub in_flight: u64,
    /// Waiting out a delay.
    pub delayed: u64,
}

/// A queue of task messages.
#[async_trait]
pub trait TaskQueue: Send + Sync + Debug {
    /// The queue's name.
    fn name(&self) -> &str;

    /// The largest body it takes, in bytes.
    fn max_message_bytes(&self) -> usize {
        DEFAULT_MAX_MESSAGE_BYTES
    }

    /// Whether it is a FIFO queue (ordered per message group, deduplicated, no per-message delay).
    fn is_fifo(&self) -> bool {
        false
    }

    /// Sends one message; returns its id.
    async fn send(&self, message: OutgoingMessage) -> Result<String, QueueError>;

    /// Receives up to `max` messages (at most 10), waiting up to `wait` for the first, hiding
    /// them for `visibility`.
    async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;

    /// Deletes received messages by receipt handle.
    async fn delete(&self, receipt_handles: &[String]) -> Result<(), QueueError>;

    /// Changes how long a received message stays hidden (zero makes it visible now).
    async fn change_visibility(&self, receipt_handle: &str, visibility: Duration) -> Result<(), QueueError>;

    /// How many messages it holds.
    async fn depth(&self) -> Result<QueueDepth, QueueError>;
}

/// Checks a body against a queue's size limit before anything is written.
pub fn check_size(queue: &dyn TaskQueue, body: &str) -> Result<(), QueueError> {
    let bytes = body.len();
    let limit = queue.max_message_bytes();
    if bytes > limit {
        return Err(QueueError::TooLarge { queue: queue.name().to_owned(), bytes, limit });
    }
    Ok(())
}

/// The attributes of a dead letter: why, and where it came from.
pub fn dead_letter_attributes(reason: &str, source_queue: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (REASON_ATTRIBUTE.to_owned(), reason.to_owned()),
        (SOURCE_QUEUE_ATTRIBUTE.to_owned(), source_queue.to_owned()),
    ])
}

/// Checks what a FIFO queue needs of a message: no delay, a group, a deduplication id.
pub fn check_fifo(queue: &dyn TaskQueue, message: &OutgoingMessage) -> Result<(), QueueError> {
    let refuse = |message: &str| Err(QueueError::Fifo { queue: queue.name().to_owned(), message: message.to_owned() });
    if !queue.is_fifo() {
        return Ok(());
    }
    if !message.delay.is_zero() {
        return refuse("a FIFO queue has no per-message delay; drop the countdown/eta or use a standard queue");
    }
    if message.group_id.as_deref().is_none_or(str::is_empty) {
        return refuse("a message needs a message group id");
    }
    if message.deduplication_id.as_deref().is_none_or(str::is_empty) {
        return refuse("a message needs a deduplication id");
    }
    Ok(())
}
