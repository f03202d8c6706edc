//! `TaskQueue`: where task messages wait. SQS in AWS, SQLite in `taskbeat local`, with SQS's
//! semantics either way (visibility timeout, receive count, redrive to a DLQ, per-message delay).

pub mod dead_letters;
pub mod sqlite;
pub mod sqs;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
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

/// How long a message taken to be looked at or moved stays hidden from consumers.
pub const HANDLING_VISIBILITY: Duration = Duration::from_secs(60);
/// How long a receive that looks at or moves messages waits for the first one: enough for SQS
/// to answer from all its servers (a long poll), little enough for an empty queue.
const HANDLING_WAIT: Duration = Duration::from_secs(1);

/// How messages were moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveMethod {
    /// SQS's own move task (`StartMessageMoveTask`).
    MessageMoveTask,
    /// Received, sent to the target (body, attributes and group as they were), then deleted.
    ReceiveSendDelete,
    /// The embedded queue moved the rows in one transaction.
    Embedded,
}

/// One moved message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MovedMessage {
    /// Its id in the queue it left.
    pub message_id: String,
    /// Its id in the target queue.
    pub new_message_id: String,
}

/// What a move did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveOutcome {
    /// How.
    pub method: MoveMethod,
    /// The messages moved, one by one (empty for SQS's move task, which does not say).
    pub moved: Vec<MovedMessage>,
    /// How many moved.
    pub count: u64,
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

    /// Up to `max` messages that are ready, to look at without consuming them. By default they
    /// are received (hidden briefly) and made visible again at once: their receive counts go
    /// up, as with SQS, which has no peek. The embedded queue looks without receiving.
    async fn peek(&self, max: usize) -> Result<Vec<ReceivedMessage>, QueueError> {
        peek_by_receiving(self, max).await
    }

    /// Moves ready messages to `target`: all of them (`ids` = `None`) or those with these ids.
    /// None is lost or duplicated; bodies, attributes and FIFO groups stay as they were.
    async fn move_messages(&self, target: &dyn TaskQueue, ids: Option<&[String]>) -> Result<MoveOutcome, QueueError> {
        move_by_copy(self, target, ids).await
    }

    /// Deletes every message (ready, in flight or delayed); returns about how many.
    async fn purge(&self) -> Result<u64, QueueError>;

    /// The implementation, for operations between two queues of one backend (a move inside
    /// one embedded database, SQS's move task between two SQS queues).
    fn as_any(&self) -> &dyn Any;
}

/// [`TaskQueue::peek`] by receiving and releasing: receives until `max` or the queue is empty
/// (hidden meanwhile so none comes twice), then makes them all visible again.
pub async fn peek_by_receiving<Q: TaskQueue + ?Sized>(
    queue: &Q,
    max: usize,
) -> Result<Vec<ReceivedMessage>, QueueError> {
    let mut seen: Vec<ReceivedMessage> = Vec::new();
    let mut outcome = Ok(());
    while seen.len() < max {
        match queue.receive((max - seen.len()).min(10), HANDLING_WAIT, HANDLING_VISIBILITY).await {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => seen.extend(batch),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    // Released even after an error, so nothing stays hidden longer than it must.
    release(queue, &seen).await;
    outcome?;
    Ok(seen)
}

/// Makes received messages visible again. A failure is only logged: the message comes back
/// anyway when its visibility timeout ends.
async fn release<Q: TaskQueue + ?Sized>(queue: &Q, messages: &[ReceivedMessage]) {
    for message in messages {
        if let Err(e) = queue.change_visibility(&message.receipt_handle, Duration::ZERO).await {
            tracing::warn!(queue = queue.name(), message_id = %message.message_id, error = %e, "not released; visible again within a minute");
        }
    }
}

/// [`TaskQueue::move_messages`] by receive, send, delete: each message is sent to `target`
/// before it is deleted here, so a failure between the two leaves a copy in both rather than
/// in neither (the task id makes the second delivery harmless; a FIFO target drops it, the
/// deduplication id being the message's id here). Messages received but not asked for are
/// released at the end, and so are messages that arrived after the move began: a worker that
/// dead-letters a moved message again must not keep the move going for ever.
pub async fn move_by_copy<Q: TaskQueue + ?Sized>(
    source: &Q,
    target: &dyn TaskQueue,
    ids: Option<&[String]>,
) -> Result<MoveOutcome, QueueError> {
    let mut wanted: Option<BTreeSet<&str>> = ids.map(|ids| ids.iter().map(String::as_str).collect());
    let began = Utc::now();
    // Also by body, should the clocks of this machine and the queue's service disagree.
    let mut moved_bodies: BTreeSet<String> = BTreeSet::new();
    let mut moved = Vec::new();
    let mut held: Vec<ReceivedMessage> = Vec::new();
    let mut outcome = Ok(());
    'receiving: while wanted.as_ref().is_none_or(|w| !w.is_empty()) {
        let batch = match source.receive(10, HANDLING_WAIT, HANDLING_VISIBILITY).await {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => batch,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        let mut batch = batch.into_iter();
        while let Some(message) = batch.next() {
            if let Some(wanted) = &mut wanted
                && !wanted.remove(message.message_id.as_str())
            {
                held.push(message);
                continue;
            }
            if message.sent_at > began || moved_bodies.contains(&message.body) {
                held.push(message);
                continue;
            }
            match copy_then_delete(source, target, &message).await {
                Ok(new_message_id) => {
                    moved_bodies.insert(message.body);
                    moved.push(MovedMessage { message_id: message.message_id, new_message_id });
                }
                Err(e) => {
                    held.push(message);
                    held.extend(batch);
                    outcome = Err(e);
                    break 'receiving;
                }
            }
        }
    }
    release(source, &held).await;
    outcome?;
    let count = moved.len() as u64;
    Ok(MoveOutcome { method: MoveMethod::ReceiveSendDelete, moved, count })
}

async fn copy_then_delete<Q: TaskQueue + ?Sized>(
    source: &Q,
    target: &dyn TaskQueue,
    message: &ReceivedMessage,
) -> Result<String, QueueError> {
    let fifo = target.is_fifo();
    let copy = OutgoingMessage {
        body: message.body.clone(),
        delay: Duration::ZERO,
        attributes: message.attributes.clone(),
        // A dead letter that reached a FIFO DLQ without a group (none should) still needs one.
        group_id: fifo.then(|| message.group_id.clone().unwrap_or_else(|| "dead-letters".into())),
        deduplication_id: fifo.then(|| message.message_id.clone()),
    };
    let new_id = target.send(copy).await?;
    source.delete(std::slice::from_ref(&message.receipt_handle)).await?;
    Ok(new_id)
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
