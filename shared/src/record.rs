//! The task record: one per task id, what `AsyncResult(id)` read in Celery.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::envelope::Envelope;
use crate::state::TaskState;

/// How long a record is kept before the store's TTL removes it.
pub const DEFAULT_RECORD_TTL: Duration = Duration::days(30);

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
