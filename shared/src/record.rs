//! The task record: one per task id, what `AsyncResult(id)` read in Celery.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::state::TaskState;

/// How long a record is kept before the store's TTL removes it.
pub const DEFAULT_RECORD_TTL: Duration = Duration::days(30);
/// The most state changes a record's `history` keeps (plus the PROGRESS entry of a run under
/// way), so a task that is retried or redelivered without end cannot grow its record without
/// bound.
pub const HISTORY_LIMIT: usize = 50;
/// What a history over [`HISTORY_LIMIT`] is cut back to (its newest entries). Cutting back
/// below the limit means DynamoDB trims once every ten changes, not on every write.
pub const HISTORY_TRIMMED_TO: usize = 40;

/// The error a failed task recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// The error's kind (`HttpError`, `InvalidArguments`, `panic`, `MalformedMessage`...).
    #[serde(rename = "type")]
    pub kind: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl ErrorInfo {
    /// An error of a kind with a message.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorInfo { kind: kind.into(), message: message.into() }
    }
}

/// One state change of a task: the state it entered and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    /// The state entered.
    pub state: TaskState,
    /// When.
    #[serde(with = "iso_millis")]
    pub at: DateTime<Utc>,
}

impl StateChange {
    /// `state` entered at `at`.
    pub fn new(state: TaskState, at: DateTime<Utc>) -> Self {
        StateChange { state, at }
    }
}

/// Cuts a history over [`HISTORY_LIMIT`] back to its newest [`HISTORY_TRIMMED_TO`] entries.
pub fn trim_history(history: &mut Vec<StateChange>) {
    if history.len() > HISTORY_LIMIT {
        history.drain(..history.len() - HISTORY_TRIMMED_TO);
    }
}

/// One task's record, flat so a person can read it in the DynamoDB console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task id.
    pub id: Uuid,
    /// Task name.
    pub task: String,
    /// Queue it was sent to.
    pub queue: String,
    /// Current state.
    pub state: TaskState,
    /// Progress, 0 to 100.
    #[serde(default)]
    pub progress: u8,
    /// The latest status text the task reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The latest meta the task reported (`update_state(meta=...)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
    /// Positional arguments, kept for `retry` and for operators.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// The return value, once SUCCESS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error, once FAILURE (or the reason of a RETRY or REVOKED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// How many retries have been made.
    #[serde(default)]
    pub retries: u32,
    /// The task that sent this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<Uuid>,
    /// The first task of the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<Uuid>,
    /// When the record was created (sent).
    #[serde(with = "iso_millis")]
    pub created_at: DateTime<Utc>,
    /// When the body last started.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "iso_millis::option")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "iso_millis::option")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Last change.
    #[serde(with = "iso_millis")]
    pub updated_at: DateTime<Utc>,
    /// Until when (epoch milliseconds) the current claim holds; absent when nobody runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<i64>,
    /// Expiry for the store's TTL, epoch seconds.
    pub ttl: i64,
    /// Every state change, oldest first, written by the same write that changed the state
    /// (at most [`HISTORY_LIMIT`]; the oldest are dropped beyond). Empty in records written
    /// before histories were kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<StateChange>,
}

impl TaskRecord {
    /// The PENDING record of an envelope about to be sent to `queue`.
    pub fn pending(envelope: &Envelope, queue: &str) -> Self {
        let now = Utc::now();
        TaskRecord {
            id: envelope.id,
            task: envelope.task.clone(),
            queue: queue.to_owned(),
            state: TaskState::Pending,
            progress: 0,
            status: None,
            meta: None,
            args: envelope.args.clone(),
            kwargs: envelope.kwargs.clone(),
            result: None,
            error: None,
            retries: envelope.retries,
            parent_id: envelope.parent_id,
            root_id: envelope.root_id,
            created_at: envelope.sent_at.unwrap_or(now),
            started_at: None,
            finished_at: None,
            updated_at: now,
            lease_until: None,
            ttl: ttl_from(now),
            history: vec![StateChange::new(TaskState::Pending, now)],
        }
    }

    /// How long it ran (started to finished), when both are known.
    pub fn duration(&self) -> Option<Duration> {
        Some(self.finished_at? - self.started_at?)
    }
}

/// The TTL attribute for a record written at `now`.
pub fn ttl_from(now: DateTime<Utc>) -> i64 {
    (now + DEFAULT_RECORD_TTL).timestamp()
}

/// The timestamp format of every record: ISO-8601 UTC with milliseconds.
pub fn iso(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Serde for timestamps as fixed-width ISO-8601 UTC, so that they sort as strings (index range keys).
pub mod iso_millis {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `2026-12-03T13:11:30.123Z`.
    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::iso(*ts))
    }

    /// Reads any RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }

    /// The same for optional timestamps.
    pub mod option {
        use super::*;

        /// Writes the timestamp when present (skip `None` with `skip_serializing_if`).
        pub fn serialize<S: Serializer>(ts: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
            match ts {
                Some(ts) => super::serialize(ts, s),
                None => s.serialize_none(),
            }
        }

        /// Reads an optional RFC 3339 timestamp.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
            let text: Option<String> = Option::deserialize(d)?;
            text.map(|t| {
                DateTime::parse_from_rfc3339(&t).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
            })
            .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_written_before_histories_reads_with_an_empty_one() {
        let old = r#"{"id":"9f8a7c7e-2d4b-4c1a-8f3e-1a2b3c4d5e6f","task":"t","queue":"default","state":"SUCCESS",
            "created_at":"2026-12-03T09:59:58.123Z","updated_at":"2026-12-03T09:59:59.402Z","ttl":1767434399}"#;
        let record: TaskRecord = serde_json::from_str(old).unwrap_or_else(|e| panic!("{e}"));
        assert!(record.history.is_empty());
        let text = serde_json::to_string(&record).unwrap_or_default();
        assert!(!text.contains("history"), "an empty history is not written: {text}");
    }

    #[test]
    fn history_entries_are_state_and_time() {
        let at = DateTime::parse_from_rfc3339("2026-12-03T09:59:58.123Z").map(|t| t.with_timezone(&Utc));
        let change = StateChange::new(TaskState::Started, at.unwrap_or_default());
        assert_eq!(
            serde_json::to_value(change).unwrap_or_default(),
            serde_json::json!({"state": "STARTED", "at": "2026-12-03T09:59:58.123Z"})
        );
    }

    #[test]
    fn a_long_history_is_cut_back_to_its_newest_entries() {
        let now = Utc::now();
        let mut history: Vec<StateChange> = (0..HISTORY_LIMIT)
            .map(|i| StateChange::new(TaskState::Retry, now + Duration::milliseconds(i as i64)))
            .collect();
        trim_history(&mut history);
        assert_eq!(history.len(), HISTORY_LIMIT, "at the limit: kept");
        history.push(StateChange::new(TaskState::Success, now + Duration::seconds(1)));
        trim_history(&mut history);
        assert_eq!(history.len(), HISTORY_TRIMMED_TO);
        assert_eq!(history.last().map(|c| c.state), Some(TaskState::Success), "the newest kept");
        assert_eq!(history[0].at, now + Duration::milliseconds((HISTORY_LIMIT + 1 - HISTORY_TRIMMED_TO) as i64));
    }
}
