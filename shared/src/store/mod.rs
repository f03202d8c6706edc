//! `StateStore`: where task records live. DynamoDB in AWS, SQLite in `taskbeat local`.
//!
//! Every implementation keeps the same rules: a terminal state is never overwritten, a claim
//! succeeds only when the task is not terminal and no other claim's lease is live, and lists
//! go through an index, newest first.

pub mod dynamodb;
pub mod sqlite;

use std::fmt::{self, Debug};
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::record::{ErrorInfo, StateChange, TaskRecord, iso, trim_history};
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
    /// The invocation, for a record that does not exist yet (a task expired or dead-lettered
    /// before anything recorded it): kept so that `retry` can send it again.
    pub args: Vec<Value>,
    /// Keyword arguments, likewise.
    pub kwargs: Map<String, Value>,
    /// The parent task, likewise.
    pub parent_id: Option<Uuid>,
    /// The root task, likewise.
    pub root_id: Option<Uuid>,
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
            args: Vec::new(),
            kwargs: Map::new(),
            parent_id: None,
            root_id: None,
        }
    }

    /// A completion of the task an envelope carries, with its invocation for a first write.
    pub fn of_envelope(envelope: &Envelope, queue: &str, state: TaskState) -> Self {
        Completion {
            args: envelope.args.clone(),
            kwargs: envelope.kwargs.clone(),
            parent_id: envelope.parent_id,
            root_id: envelope.root_id,
            ..Completion::new(envelope.id, &envelope.task, queue, state)
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
    /// Tasks of one name in one state (the task index, filtered by state).
    TaskAndState(String, TaskState),
}

/// Where a page of a listing ends: the last record's creation time and id. Listings are
/// ordered by (`created_at`, `id`), newest first, so records created in the same millisecond
/// are neither skipped nor repeated between pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    /// The last listed record's creation time.
    pub created_at: DateTime<Utc>,
    /// The last listed record's id.
    pub id: Uuid,
}

impl ListCursor {
    /// The cursor after `record`.
    pub fn after(record: &TaskRecord) -> Self {
        ListCursor { created_at: record.created_at, id: record.id }
    }

    /// Whether `record` comes after the cursor in listing order (is older, or as old with a
    /// smaller id).
    pub fn precedes(&self, record: &TaskRecord) -> bool {
        (record.created_at, record.id) < (self.created_at, self.id)
    }
}

/// Written as `<created_at>_<id>` (`2026-12-03T09:59:58.123Z_9f8a7c7e-...`): the `next` a
/// listing prints and `--cursor` takes.
impl fmt::Display for ListCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", iso(self.created_at), self.id)
    }
}

/// A cursor that is not `<time>_<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor `{0}`: pass the `next` value a listing printed (<time>_<task id>)")]
pub struct InvalidCursor(pub String);

impl FromStr for ListCursor {
    type Err = InvalidCursor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidCursor(text.to_owned());
        let (time, id) = text.trim().rsplit_once('_').ok_or_else(invalid)?;
        let created_at = DateTime::parse_from_rfc3339(time).map_err(|_| invalid())?.with_timezone(&Utc);
        let id = Uuid::parse_str(id).map_err(|_| invalid())?;
        Ok(ListCursor { created_at, id })
    }
}

/// The error kinds the batch handler records when it dead-letters a message without running it
/// (a body that is not an envelope, a task the module does not have). Such a FAILURE can be
/// reopened by a redrive ([`StateStore::reopen_dead_letter`]).
pub const DEAD_LETTER_ERROR_KINDS: [&str; 2] = ["MalformedMessage", "UnknownTask"];

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

    /// One page of a listing: like [`StateStore::list`], ordered by (`created_at`, `id`)
    /// newest first, starting after `cursor` (the previous page's last record).
    async fn list_page(&self, query: &ListQuery, cursor: Option<&ListCursor>) -> Result<Vec<TaskRecord>, StoreError> {
        match cursor {
            None => self.list(query).await,
            Some(_) => Err(StoreError::Backend("this state store cannot list past a cursor".into())),
        }
    }

    /// Makes a task whose message was dead-lettered without running (a FAILURE of a kind in
    /// [`DEAD_LETTER_ERROR_KINDS`]) runnable again: PENDING, error cleared, history noting it.
    /// The one exception to "a terminal state is never rewritten", for an operator's redrive.
    /// Returns true when it reopened the record; false when there is nothing to reopen (no
    /// record, or one not finished, which runs when its message comes back anyway); `Terminal`
    /// when the task finished otherwise (it ran, or was revoked): its message would be
    /// acknowledged without running.
    async fn reopen_dead_letter(&self, id: Uuid) -> Result<bool, StoreError> {
        let _ = id;
        Err(StoreError::Backend("this state store cannot reopen dead-lettered tasks".into()))
    }

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
            record.history.push(StateChange::new(TaskState::Started, now));
            trim_history(&mut record.history);
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
            history: vec![StateChange::new(TaskState::Started, now)],
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
    // Only the first report of a run changes the state; the others only move the progress.
    // Not trimmed here: DynamoDB files this entry with the run's next state change, and trims
    // then, so both backends trim at the same writes and keep the same entries.
    if record.state != TaskState::Progress {
        record.history.push(StateChange::new(TaskState::Progress, now));
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
            args: completion.args.clone(),
            kwargs: completion.kwargs.clone(),
            result: None,
            error: None,
            retries: 0,
            parent_id: completion.parent_id,
            root_id: completion.root_id,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            lease_until: None,
            ttl: crate::record::ttl_from(now),
            history: Vec::new(),
        },
    };
    if let Some(update) = &completion.last_progress {
        merge_progress(&mut record, update);
    }
    record.state = completion.state;
    record.updated_at = now;
    record.lease_until = None;
    record.history.push(StateChange::new(completion.state, now));
    trim_history(&mut record.history);
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

/// Whether a record is the FAILURE of a dead-lettering (see [`DEAD_LETTER_ERROR_KINDS`]).
pub fn is_dead_letter_failure(record: &TaskRecord) -> bool {
    record.state == TaskState::Failure
        && record.error.as_ref().is_some_and(|e| DEAD_LETTER_ERROR_KINDS.contains(&e.kind.as_str()))
}

/// Applies a redrive's reopening to the current record, as every backend must: `Ok(Some)` is
/// the record to write, `Ok(None)` nothing to do (see [`StateStore::reopen_dead_letter`]).
pub fn apply_reopen(
    current: Option<TaskRecord>,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<TaskRecord>, StoreError> {
    let Some(mut record) = current else { return Ok(None) };
    if !record.state.is_terminal() {
        return Ok(None);
    }
    if !is_dead_letter_failure(&record) {
        return Err(StoreError::Terminal { id, state: record.state });
    }
    record.state = TaskState::Pending;
    record.error = None;
    record.result = None;
    record.finished_at = None;
    record.lease_until = None;
    record.updated_at = now;
    record.history.push(StateChange::new(TaskState::Pending, now));
    trim_history(&mut record.history);
    Ok(Some(record))
}

/// Which tasks a listing shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this state.
    pub state: Option<TaskState>,
    /// Only this task name.
    pub task: Option<String>,
    /// Only tasks created at or after this time.
    pub since: Option<DateTime<Utc>>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// Records, newest first.
    pub records: Vec<TaskRecord>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<ListCursor>,
}

/// Lists tasks newest first through the indexes (never a scan): by task name (and state), by
/// state, or, with neither, the per-state listings merged. Up to `limit` records after
/// `cursor`, and the cursor of the next page when there is one.
pub async fn list_tasks(
    store: &dyn StateStore,
    filter: &ListFilter,
    cursor: Option<&ListCursor>,
    limit: usize,
) -> Result<ListPage, StoreError> {
    let limit = limit.max(1);
    // One more than asked says whether another page exists.
    let query = |by: ListBy| ListQuery { by, since: filter.since, limit: limit.saturating_add(1) };
    let queries: Vec<ListQuery> = match (&filter.task, filter.state) {
        (Some(task), Some(state)) => vec![query(ListBy::TaskAndState(task.clone(), state))],
        (Some(task), None) => vec![query(ListBy::Task(task.clone()))],
        (None, Some(state)) => vec![query(ListBy::State(state))],
        (None, None) => TaskState::ALL.into_iter().map(|state| query(ListBy::State(state))).collect(),
    };
    let pages = futures::future::try_join_all(queries.iter().map(|q| store.list_page(q, cursor))).await?;
    let mut records: Vec<TaskRecord> = pages.into_iter().flatten().collect();
    // A record changing state between two of the per-state queries can show up in both.
    records.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
    records.dedup_by_key(|r| r.id);
    let more = records.len() > limit;
    records.truncate(limit);
    let next = if more { records.last().map(ListCursor::after) } else { None };
    Ok(ListPage { records, next })
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
