//! The envelope: the JSON body of every SQS message taskbeat sends or accepts.
//!
//! The schema is `shared/schema/envelope.schema.json`; producers in any language write it.
//! Unknown fields are ignored; a missing or wrongly typed required field is a
//! [`EnvelopeError`] naming the field, never a panic.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The envelope version this runtime writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// One task invocation as it travels on a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Envelope format version; only [`ENVELOPE_VERSION`] is accepted.
    pub version: u32,
    /// The task id (a UUID); stays the same across retries.
    pub id: Uuid,
    /// The task name, as Celery names it (`app.schedules.user_task.process_users`).
    pub task: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// How many times this task was retried before this delivery.
    #[serde(default)]
    pub retries: u32,
    /// Do not run before this time (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<DateTime<Utc>>,
    /// Do not run after this time (UTC); an expired task is recorded REVOKED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// When the producer sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// Who sent it (host, service or CLI), for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The task that sent this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<Uuid>,
    /// The first task of the chain this one belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<Uuid>,
}

/// Why a message body is not a usable envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is empty.
    #[error("empty message body: expected a JSON taskbeat envelope")]
    Empty,
    /// The body is not JSON at all.
    #[error("message body is not JSON ({0}): expected a taskbeat envelope, see shared/schema/envelope.schema.json")]
    NotJson(String),
    /// A field is missing or has the wrong type.
    #[error("invalid envelope field `{field}`: {message}")]
    Field {
        /// The field's path (`task`, `args`, `kwargs.x`); `.` for the whole body.
        field: String,
        /// What was wrong with it.
        message: String,
    },
    /// A version this runtime does not read.
    #[error("unsupported envelope version {0}: this runtime reads version {ENVELOPE_VERSION}")]
    UnsupportedVersion(u32),
}

impl EnvelopeError {
    /// What was wrong, without any value from the body: safe for logs.
    pub fn summary(&self) -> String {
        match self {
            EnvelopeError::Empty => "empty body".to_owned(),
            EnvelopeError::NotJson(_) => "body is not JSON".to_owned(),
            EnvelopeError::Field { field, .. } => format!("invalid envelope field `{field}`"),
            EnvelopeError::UnsupportedVersion(v) => format!("unsupported envelope version {v}"),
        }
    }

    /// The field the error is about, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            EnvelopeError::Field { field, .. } => Some(field),
            EnvelopeError::UnsupportedVersion(_) => Some("version"),
            _ => None,
        }
    }
}

impl Envelope {
    /// A new envelope with a fresh id, sent now.
    pub fn new(task: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        let id = Uuid::new_v4();
        Envelope {
            version: ENVELOPE_VERSION,
            id,
            task: task.into(),
            args,
            kwargs,
            retries: 0,
            eta: None,
            expires: None,
            sent_at: Some(Utc::now()),
            origin: None,
            parent_id: None,
            root_id: None,
        }
    }

    /// Parses and validates a message body.
    pub fn parse(body: &str) -> Result<Self, EnvelopeError> {
        if body.trim().is_empty() {
            return Err(EnvelopeError::Empty);
        }
        let value: Value = serde_json::from_str(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        Self::from_value(value)
    }

    /// Validates an already-parsed JSON value.
    pub fn from_value(value: Value) -> Result<Self, EnvelopeError> {
        let Value::Object(object) = &value else {
            return Err(EnvelopeError::Field {
                field: ".".into(),
                message: format!("expected a JSON object, found {}", json_kind(&value)),
            });
        };
        // Name a missing required field before serde's generic message does.
        for required in ["version", "id", "task"] {
            if !object.contains_key(required) {
                return Err(EnvelopeError::Field {
                    field: required.into(),
                    message: "required field is missing".into(),
                });
            }
        }
        let envelope: Envelope = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            EnvelopeError::Field { field, message: e.into_inner().to_string() }
        })?;
        if envelope.version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(envelope.version));
        }
        if envelope.task.trim().is_empty() {
            return Err(EnvelopeError::Field { field: "task".into(), message: "must not be empty".into() });
        }
        Ok(envelope)
    }

    /// Best effort: the task id of a body that failed to parse, so its failure can be recorded.
    pub fn salvage_id(body: &str) -> Option<(Uuid, Option<String>)> {
        let value: Value = serde_json::from_str(body).ok()?;
        let id = value.get("id")?.as_str()?.parse().ok()?;
        let task = value.get("task").and_then(Value::as_str).map(str::to_owned);
        Some((id, task))
    }

    /// The JSON body as sent on the queue. Every character SQS refuses in a message body
    /// (U+FFFE, U+FFFF, and controls, which JSON escapes anyway) is written as a `\u` escape,
    /// so any text round-trips exactly.
    pub fn to_body(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        if !json.contains(['\u{FFFE}', '\u{FFFF}']) {
            return json;
        }
        // Outside strings JSON has only ASCII, so these can only be inside strings.
        json.replace('\u{FFFE}', "\\ufffe").replace('\u{FFFF}', "\\uffff")
    }
}

/// What kind of JSON value this is, for messages (`a string`, `an object`, ...).
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_through_the_body() {
        let mut env =
            Envelope::new("app.schedules.user_task.process_users", vec![json!(["u1"]), json!("x")], Map::new());
        env.origin = Some("test".into());
        let parsed = Envelope::parse(&env.to_body()).unwrap();
        assert_eq!(parsed, env);
    }

    #[test]
    fn any_text_round_trips_and_the_body_is_sqs_safe() {
        let nasty = "\u{0}\u{1}\u{7}\t\r\n\u{7f}\u{FFFE}\u{FFFF}\u{FFFD}\u{10FFFF}处理中 🚀 \"quoted\" \\ back";
        let env = Envelope::new("t", vec![json!(nasty)], Map::from_iter([(nasty.to_owned(), json!([nasty]))]));
        let body = env.to_body();
        // SQS: #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF
        assert!(body.chars().all(
            |c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
        ));
        assert_eq!(Envelope::parse(&body).unwrap(), env);
    }

    #[test]
    fn unknown_fields_are_ignored_and_defaults_apply() {
        let id = Uuid::new_v4();
        let env = Envelope::parse(&format!(r#"{{"version":1,"id":"{id}","task":"t","future":true}}"#)).unwrap();
        assert!(env.args.is_empty() && env.kwargs.is_empty() && env.retries == 0);
    }

    #[test]
    fn errors_name_the_field() {
        let id = Uuid::new_v4();
        let cases = [
            (format!(r#"{{"version":1,"id":"{id}"}}"#), "task"),
            (format!(r#"{{"version":1,"id":"{id}","task":5}}"#), "task"),
            (r#"{"version":1,"id":"nope","task":"t"}"#.to_owned(), "id"),
            (format!(r#"{{"version":1,"id":"{id}","task":"t","args":{{}}}}"#), "args"),
            (format!(r#"{{"version":1,"id":"{id}","task":"t","eta":"tomorrow"}}"#), "eta"),
            (format!(r#"{{"version":2,"id":"{id}","task":"t"}}"#), "version"),
        ];
        for (body, field) in cases {
            let err = Envelope::parse(&body).unwrap_err();
            assert_eq!(err.field(), Some(field), "{body}: {err}");
            assert!(err.to_string().contains(field), "{err}");
        }
        assert!(matches!(Envelope::parse("not json"), Err(EnvelopeError::NotJson(_))));
        assert!(matches!(Envelope::parse("  "), Err(EnvelopeError::Empty)));
        assert_eq!(Envelope::parse("[1]").unwrap_err().field(), Some("."));
    }

    #[test]
    fn salvages_the_id_of_a_broken_envelope() {
        let id = Uuid::new_v4();
        let (got, task) = Envelope::salvage_id(&format!(r#"{{"id":"{id}","task":"t","args":7}}"#)).unwrap();
        assert_eq!((got, task.as_deref()), (id, Some("t")));
        assert!(Envelope::salvage_id("{").is_none());
    }
}
