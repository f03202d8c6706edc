//! `StateStore`: where task records live. DynamoDB in AWS, SQLite in `taskbeat local`.
//!
//! Every implementation keeps the same rules: a terminal state is never overwritten, a claim
//! succeeds only when the task is not terminal and no other claim's lease is live, and lists
//! go through an index, newest first.

pub mod dynamodb;
pub mod sqlite;

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::record::{ErrorInfo, TaskRecord};
use crate::state::TaskState;

/// What went wrong in a store.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// `create` for an id that already has a record.
    #[error("task {0} already has a record")]
    AlreadyExists(Uuid),
    /// The task has no record.
    #[error("task {0} has no record")]
    NotFound(Uuid),
    /// The task is finished; its record is never rewritten.
    #[error("task {id} is already {state}; a finished task's record is never rewritten")]
    Terminal {
        /// Task id.
        id: Uuid,
        /// Its terminal state.
        state: TaskState,
    },
    /// The record would exceed what the store holds.
    #[error("record of task {id} is {bytes} bytes, over the store's limit of {limit} bytes")]
    TooLarge {
        /// Task id.
        id: Uuid,
        /// Encoded size.
        bytes: usize,
        /// The store's limit.
        limit: usize,
    },
    /// The backend asked us to slow down; the operation can be retried.
    #[error("state store throttled: {0}")]
    Throttled(String),
    /// The backend failed (network, disk, permissions); the operation can be retried.
    #[error("state store failed: {0}")]
    Backend(String),
    /// A stored record could not be read.
    #[error("stored record {id} is unreadable: {message}")]
    Corrupt {
        /// Task id.
        id: String,
        /// Why.
        message: String,
    },
}

/// A worker's request to start a task.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Task id.
    pub id: Uuid,
    /// Task name (used when no PENDING record exists, e.g. a message sent by another producer).
    pub task: String,
    /// Queue it came from.
    pub queue: String,
    /// Arguments, recorded when the record is created here.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Retries before this delivery.
    pub retries: u32,
    /// Parent task.
    pub parent_id: Option<Uuid>,
    /// Root task.
    pub root_id: Option<Uuid>,
    /// How long the claim holds.
    pub lease: Duration,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// The caller now runs the task; the record as written (STARTED).
    Claimed(Box<TaskRecord>),
    /// Another claim's lease is live until this time: hand the message back.
    Busy {
        /// End of the live lease.
        lease_until: DateTime<Utc>,
    },
    /// The task is already finished (or revoked): acknowledge without running.
    Finished(TaskState),
}

/// A running task's report (`update_state` / `progress`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressUpdate {
    /// Progress 0-100, when reported.
    pub progress: Option<u8>,
    /// Status text, when reported.
    pub status: Option<String>,
    /// Meta, when reported.
    pub meta: Option<Map<String, Value>>,
}

/// The end of one run: a terminal state, or RETRY.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Task id.
    pub id: Uuid,
    /// Task name, for a record that does not exist yet (a dead-lettered envelope).
    pub task: String,
    /// Queue, likewise.
    pub queue: String,
    /// SUCCESS, FAILURE, REVOKED or RETRY.
    pub state: TaskState,
    /// The return value of a SUCCESS.
    pub result: Option<Value>,
    /// The error of a FAILURE, or the reason of a RETRY or REVOKED.
    pub error: Option<ErrorInfo>,
    /// The retry count to record, when it changes.
    pub retries: Option<u32>,
    /// A last progress report not yet written (coalesced), merged into this write.
    pub last_progress: Option<ProgressUpdate>,
}

impl Completion {
    /// A completion in `state` with nothing else set.
    pub fn new(id: Uuid, task: &str, queue: &str, state: TaskState) -> Self {
        Completion {
            id,
            task: task.to_owned(),
            queue: queue.to_owned(),
            state,
            result: None,
            error: None,
            retries: None,
            last_progress: None,
        }
    }
}

/// Which index a list reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListBy {
    /// Tasks in one state.
    State(TaskState),
    /// Tasks of one name.
    Task(String),
}

/// A list request: newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// The index and its key.
    pub by: ListBy,
    /// Only tasks created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many.
    pub limit: usize,
}

/// Where task records live.
#[async_trait]
pub trait StateStore: Send + Sync + Debug {
    /// Writes a new record (PENDING); fails with `AlreadyExists` when the id has one.
    async fn create(&self, record: &TaskRecord) -> Result<(), StoreError>;

    /// Claims a task for running, with a lease (see [`ClaimOutcome`]).
    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError>;

    /// Records progress of a running task (state PROGRESS); refused once terminal.
    async fn progress(&self, id: Uuid, update: &ProgressUpdate) -> Result<(), StoreError>;

    /// Records the end of a run; refused (`Terminal`) when the task is already finished.
    async fn complete(&self, completion: &Completion) -> Result<(), StoreError>;

    /// Reads one record.
    async fn get(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError>;

    /// Lists records through an index, newest first.
    async fn list(&self, query: &ListQuery) -> Result<Vec<TaskRecord>, StoreError>;

    /// Celery's `revoke(id)`: marks a task REVOKED unless it is finished. A pending task is then
    /// never started; a running one sees it through `ctx.is_revoked()`, and its end is not
    /// recorded over REVOKED. Returns the state it had.
    async fn revoke(&self, id: Uuid, reason: &str) -> Result<TaskState, StoreError> {
        let record = self.get(id).await?.ok_or(StoreError::NotFound(id))?;
        if record.state.is_terminal() {
            return Err(StoreError::Terminal { id, state: record.state });
        }
        let mut completion = Completion::new(id, &record.task, &record.queue, TaskState::Revoked);
        completion.error = Some(ErrorInfo::new("Revoked", reason));
        self.complete(&completion).await?;
        Ok(record.state)
    }

    /// Takes the marker `key` for `ttl` when no live one exists (one conditional write): true
    /// when taken, false when another holder's marker is still live. For deduplication
    /// (an alert's dedup key within a window) and other once-per-window work.
    async fn acquire_marker(&self, key: &str, ttl: std::time::Duration) -> Result<bool, StoreError>;
}

/// Applies a claim to the current record (or none), as every backend must. Returns the record
/// to write, or the outcome that refuses the claim.
pub fn apply_claim(
    current: Option<TaskRecord>,
    request: &ClaimRequest,
    now: DateTime<Utc>,
) -> Result<TaskRecord, ClaimOutcome> {
    let lease_until = (now + request.lease).timestamp_millis();
    match current {
        Some(record) if record.state.is_terminal() => Err(ClaimOutcome::Finished(record.state)),
        Some(record) if record.lease_until.is_some_and(|until| until > now.timestamp_millis()) => {
            Err(ClaimOutcome::Busy { lease_until: millis_to_time(record.lease_until.unwrap_or_default()) })
        }
        Some(mut record) => {
            record.state = TaskState::Started;
            record.started_at = Some(now);
            record.updated_at = now;
            record.lease_until = Some(lease_until);
            Ok(record)
        }
        None => Ok(TaskRecord {
            id: request.id,
            task: request.task.clone(),
            queue: request.queue.clone(),
            state: TaskState::Started,
            progress: 0,
            status: None,
            meta: None,
            args: request.args.clone(),
            kwargs: request.kwargs.clone(),
            result: None,
            error: None,
            retries: request.retries,
            parent_id: request.parent_id,
            root_id: request.root_id,
            created_at: now,
            started_at: Some(now),
            finished_at: None,
            updated_at: now,
            lease_until: Some(lease_until),
            ttl: crate::record::ttl_from(now),
        }),
    }
}

/// Applies a progress report to the current record, as every backend must.
pub fn apply_progress(
    current: Option<TaskRecord>,
    id: Uuid,
    update: &ProgressUpdate,
    now: DateTime<Utc>,
) -> Result<TaskRecord, StoreError> {
    let mut record = current.ok_or(StoreError::NotFound(id))?;
    if record.state.is_terminal() {
        return Err(StoreError::Terminal { id, state: record.state });
    }
    record.state = TaskState::Progress;
    merge_progress(&mut record, update);
    record.updated_at = now;
    Ok(record)
}

/// Applies a completion to the current record (or none), as every backend must.
pub fn apply_completion(
    current: Option<TaskRecord>,
    completion: &Completion,
    now: DateTime<Utc>,
) -> Result<TaskRecord, StoreError> {
    let mut record = match current {
        Some(record) if record.state.is_terminal() => {
            return Err(StoreError::Terminal { id: completion.id, state: record.state });
        }
        Some(record) => record,
        None => TaskRecord {
            id: completion.id,
            task: completion.task.clone(),
            queue: completion.queue.clone(),
            state: completion.state,
            progress: 0,
            status: None,
            meta: None,
            args: Vec::new(),
            kwargs: Map::new(),
            result: None,
            error: None,
            retries: 0,
            parent_id: None,
            root_id: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            lease_until: None,
            ttl: crate::record::ttl_from(now),
        },
    };
    if let Some(update) = &completion.last_progress {
        merge_progress(&mut record, update);
    }
    record.state = completion.state;
    record.updated_at = now;
    record.lease_until = None;
    if let Some(retries) = completion.retries {
        record.retries = retries;
    }
    record.error = completion.error.clone();
    if completion.state.is_terminal() {
        record.finished_at = Some(now);
        record.result = completion.result.clone();
        if completion.state == TaskState::Success {
            record.progress = 100;
        }
    }
    Ok(record)
}

fn merge_progress(record: &mut TaskRecord, update: &ProgressUpdate) {
    if let Some(progress) = update.progress {
        record.progress = progress.min(100);
    }
    if let Some(status) = &update.status {
        record.status = Some(status.clone());
    }
    if let Some(meta) = &update.meta {
        record.meta = Some(meta.clone());
    }
}

/// Epoch milliseconds to a UTC time.
pub fn millis_to_time(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or_default()
}
