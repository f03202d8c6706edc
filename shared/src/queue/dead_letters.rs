//! Dead letters as an operator sees them: looked at without being consumed, with the reason
//! each was dead-lettered, and moved back to their queue (a redrive).
//!
//! A message the batch handler dead-letters without running it (not an envelope, a task the
//! module lacks) leaves its task FAILURE. A redrive reopens such a record (PENDING) before the
//! message goes back, so that the task runs when it arrives instead of being acknowledged as
//! finished; a task that ran or was revoked keeps its record, and its message, moved all the
//! same, is acknowledged without running (the report says so).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{MoveMethod, QueueError, REASON_ATTRIBUTE, ReceivedMessage, SOURCE_QUEUE_ATTRIBUTE, TaskQueue};
use crate::record::iso_millis;
use crate::state::TaskState;
use crate::store::{StateStore, StoreError};

/// The most dead letters a redrive looks at (to reopen their tasks) before moving them.
pub const REDRIVE_LOOK_LIMIT: usize = 10_000;

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter queue.
    pub message_id: String,
    /// The task id in its body, when the body has one.
    pub task_id: Option<Uuid>,
    /// The task name in its body, when it has one.
    pub task: Option<String>,
    /// Why it was dead-lettered (`taskbeat-dead-letter-reason`); none when SQS moved it after
    /// its max receive count (the task kept failing, or its worker kept dying).
    pub reason: Option<String>,
    /// The queue it came from (`taskbeat-source-queue`), when the handler dead-lettered it.
    pub source_queue: Option<String>,
    /// Its FIFO message group.
    pub group_id: Option<String>,
    /// Times it was received from the dead-letter queue (looking at a dead letter on SQS
    /// receives it, so this goes up by one each time).
    pub receive_count: u32,
    /// When it was sent to the dead-letter queue.
    #[serde(with = "iso_millis")]
    pub sent_at: DateTime<Utc>,
    /// The body, as it was.
    pub body: String,
    /// Every message attribute.
    pub attributes: BTreeMap<String, String>,
}

impl From<ReceivedMessage> for DeadLetter {
    fn from(message: ReceivedMessage) -> Self {
        // taskbeat's envelope or a Celery message's headers.
        let salvaged = crate::celery::salvage_id(&message.body);
        DeadLetter {
            task_id: salvaged.as_ref().map(|(id, _)| *id),
            task: salvaged.and_then(|(_, task)| task),
            reason: message.attributes.get(REASON_ATTRIBUTE).cloned(),
            source_queue: message.attributes.get(SOURCE_QUEUE_ATTRIBUTE).cloned(),
            message_id: message.message_id,
            group_id: message.group_id,
            receive_count: message.receive_count,
            sent_at: message.sent_at,
            body: message.body,
            attributes: message.attributes,
        }
    }
}

/// Up to `max` dead letters, without consuming them (see [`TaskQueue::peek`]).
pub async fn look(dead_letters: &dyn TaskQueue, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
    Ok(dead_letters.peek(max).await?.into_iter().map(DeadLetter::from).collect())
}

/// What a redrive moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every dead letter.
    All,
    /// The one with this message id.
    Message(String),
}

/// What became of a redriven message's task record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub enum RecordFate {
    /// It was the FAILURE of its dead-lettering: now PENDING, so the task runs.
    Reopened,
    /// Not finished: the task runs when the message arrives.
    Unfinished {
        /// Its state.
        state: TaskState,
    },
    /// The task finished otherwise (it ran, or was revoked): the message will be acknowledged
    /// without running; `taskbeat retry` runs it again under a new id.
    Finished {
        /// Its state.
        state: TaskState,
    },
    /// No record (yet): the worker makes one when it claims the task.
    NoRecord,
    /// The body has no task id (not an envelope): it will be dead-lettered again.
    NoTaskId,
    /// Not looked at (it arrived during the redrive, or past the look limit).
    NotLookedAt,
}

/// One redriven message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redriven {
    /// Its id in the dead-letter queue.
    pub message_id: String,
    /// Its id back in its queue (unknown when SQS's move task moved it).
    pub new_message_id: Option<String>,
    /// Its task id.
    pub task_id: Option<Uuid>,
    /// Its task name.
    pub task: Option<String>,
    /// What became of its task record.
    #[serde(flatten)]
    pub fate: RecordFate,
}

/// What a redrive did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// How the messages moved.
    pub method: MoveMethod,
    /// How many moved.
    pub moved: u64,
    /// The moved messages (with SQS's move task: the ones looked at before it started).
    pub messages: Vec<Redriven>,
}

/// Why a redrive did not happen (or not wholly).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RedriveError {
    /// A queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The state store failed while reopening a task; nothing was moved.
    #[error("could not reopen a dead-lettered task, so nothing was moved: {0}")]
    Store(#[from] StoreError),
    /// No ready dead letter has this id.
    #[error(
        "no dead letter {message_id} ready in {queue}; `taskbeat dlq list` shows the ids (a dead letter someone is looking at is hidden for a minute)"
    )]
    NoSuchMessage {
        /// The dead-letter queue.
        queue: String,
        /// The id asked for.
        message_id: String,
    },
}

/// Moves dead letters back to `target` (their queue): the tasks of the ones looked at first
/// are reopened where they failed by dead-lettering, then the messages move (see
/// [`TaskQueue::move_messages`]). Nothing is lost or duplicated.
pub async fn redrive(
    dead_letters: &dyn TaskQueue,
    target: &dyn TaskQueue,
    store: &dyn StateStore,
    selection: &Selection,
) -> Result<RedriveReport, RedriveError> {
    let mut looked = look(dead_letters, REDRIVE_LOOK_LIMIT).await?;
    if let Selection::Message(id) = selection {
        looked.retain(|d| &d.message_id == id);
        if looked.is_empty() {
            return Err(RedriveError::NoSuchMessage { queue: dead_letters.name().to_owned(), message_id: id.clone() });
        }
    }
    let mut fates = BTreeMap::new();
    for dead in &looked {
        let fate = match dead.task_id {
            None => RecordFate::NoTaskId,
            Some(id) => match store.reopen_dead_letter(id).await {
                Ok(true) => RecordFate::Reopened,
                Ok(false) => match store.get(id).await? {
                    Some(record) => RecordFate::Unfinished { state: record.state },
                    None => RecordFate::NoRecord,
                },
                Err(StoreError::Terminal { state, .. }) => RecordFate::Finished { state },
                Err(e) => return Err(e.into()),
            },
        };
        fates.insert(dead.message_id.clone(), fate);
    }
    let ids: Option<Vec<String>> = match selection {
        Selection::All => None,
        Selection::Message(id) => Some(vec![id.clone()]),
    };
    let outcome = dead_letters.move_messages(target, ids.as_deref()).await?;
    if let (Selection::Message(id), 0) = (selection, outcome.count) {
        return Err(RedriveError::NoSuchMessage { queue: dead_letters.name().to_owned(), message_id: id.clone() });
    }
    let by_id: BTreeMap<&str, &DeadLetter> = looked.iter().map(|d| (d.message_id.as_str(), d)).collect();
    let describe = |message_id: &str, new_message_id: Option<String>| {
        let dead = by_id.get(message_id);
        Redriven {
            message_id: message_id.to_owned(),
            new_message_id,
            task_id: dead.and_then(|d| d.task_id),
            task: dead.and_then(|d| d.task.clone()),
            fate: fates.get(message_id).copied().unwrap_or(RecordFate::NotLookedAt),
        }
    };
    let messages = if outcome.method == MoveMethod::MessageMoveTask {
        looked.iter().map(|d| describe(&d.message_id, None)).collect()
    } else {
        outcome.moved.iter().map(|m| describe(&m.message_id, Some(m.new_message_id.clone()))).collect()
    };
    Ok(RedriveReport { method: outcome.method, moved: outcome.count, messages })
}
