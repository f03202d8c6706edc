//! Celery compatibility, so a Flask app keeps its `send_task` and `AsyncResult` calls while its
//! modules move to taskbeat one at a time:
//!
//! - [`message`]: Celery task protocol v2 messages, as kombu's SQS transport sends them, are
//!   accepted next to taskbeat's own envelope ([`decode`]).
//! - [`results`]: the state store can also write each state change as Celery's DynamoDB result
//!   backend stores it, so `AsyncResult(id)` reads it.
//! - [`naming`]: a queue can serve a Celery queue, under the SQS name kombu looks up.

pub mod message;
pub mod naming;
pub mod results;

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::envelope::{Envelope, EnvelopeError};
pub use message::{CeleryError, CeleryMessage};

/// The manifest's `[celery]` table: how taskbeat writes results where Celery reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CelerySettings {
    /// Also write each state change as Celery's DynamoDB result backend stores it.
    #[serde(default)]
    pub results: bool,
    /// The table Celery's backend reads (`dynamodb://.../TABLE`); `{project}-celery-results`
    /// when absent.
    #[serde(default)]
    pub results_table: Option<String>,
    /// The item key form, with `{id}`; [`results::DEFAULT_KEY_FORM`] when absent.
    #[serde(default)]
    pub result_key: Option<String>,
    /// Seconds until an item expires (`ttl_seconds` in the backend URL); no `ttl` when absent.
    #[serde(default)]
    pub result_expires: Option<u64>,
    /// Celery's `result_extended`: also write name, args, kwargs, worker, retries and queue.
    #[serde(default)]
    pub result_extended: bool,
}

/// A message body the handler can run: taskbeat's envelope or a Celery message.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// taskbeat's JSON envelope.
    Taskbeat(Envelope),
    /// A Celery task protocol v2 message from kombu's SQS transport.
    Celery(CeleryMessage),
}

impl Incoming {
    /// The task to run.
    pub fn envelope(&self) -> &Envelope {
        match self {
            Incoming::Taskbeat(envelope) => envelope,
            Incoming::Celery(message) => &message.envelope,
        }
    }

    /// The task to run, by value.
    pub fn into_envelope(self) -> Envelope {
        match self {
            Incoming::Taskbeat(envelope) => envelope,
            Incoming::Celery(message) => message.envelope,
        }
    }

    /// A time limit the message itself sets (Celery's `time_limit`/`soft_time_limit`), over the
    /// task's own.
    pub fn time_limit(&self) -> Option<Duration> {
        match self {
            Incoming::Taskbeat(_) => None,
            Incoming::Celery(message) => message.run_limit(),
        }
    }
}

/// Why a body is neither a taskbeat envelope nor a Celery message taskbeat can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncomingError {
    /// Not a valid taskbeat envelope (and not a kombu envelope either).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A kombu envelope whose Celery message cannot be run.
    #[error(transparent)]
    Celery(#[from] CeleryError),
    /// Strict base64 (as kombu's SQS transport encodes) of something that is not a kombu envelope.
    #[error(
        "message body is base64 that {0}: expected a taskbeat envelope (JSON) or a Celery message from kombu's \
         SQS transport (base64 of its JSON envelope)"
    )]
    NotKombu(String),
}

impl IncomingError {
    /// What was wrong, without any value from the body: safe for logs.
    pub fn summary(&self) -> String {
        match self {
            IncomingError::Envelope(e) => e.summary(),
            IncomingError::Celery(e) => e.summary(),
            IncomingError::NotKombu(_) => "base64 body that is not a kombu envelope".to_owned(),
        }
    }
}

/// Reads a message body: taskbeat's envelope first (a JSON object that is not kombu's
/// envelope), then strict base64 of a kombu envelope; a kombu envelope as plain JSON (the
/// transport's `sqs_base64_encoding` off) is read too. Anything else is an error.
pub fn decode(body: &str) -> Result<Incoming, IncomingError> {
    let trimmed = body.trim();
    if trimmed.starts_with('{') {
        return match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(object)) if message::is_kombu_envelope(&object) => {
                Ok(Incoming::Celery(message::from_kombu(&object)?))
            }
            Ok(value) => Ok(Incoming::Taskbeat(Envelope::from_value(value)?)),
            Err(_) => Ok(Incoming::Taskbeat(Envelope::parse(body)?)),
        };
    }
    if let Some(bytes) = message::strict_base64(trimmed) {
        let text = String::from_utf8(bytes)
            .map_err(|_| IncomingError::NotKombu("decodes to bytes that are not UTF-8".into()))?;
        return match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(object)) if message::is_kombu_envelope(&object) => {
                Ok(Incoming::Celery(message::from_kombu(&object)?))
            }
            Ok(_) => Err(IncomingError::NotKombu(
                "decodes to JSON that is not a kombu envelope (body, content-type, headers, properties)".into(),
            )),
            Err(e) => Err(IncomingError::NotKombu(format!("decodes to text that is not JSON ({e})"))),
        };
    }
    Ok(Incoming::Taskbeat(Envelope::parse(body)?))
}

/// Best effort: the task id (and name) of a body that failed to decode, from taskbeat's
/// envelope or from a kombu envelope's headers, so its failure can be recorded.
pub fn salvage_id(body: &str) -> Option<(Uuid, Option<String>)> {
    if let Some(found) = Envelope::salvage_id(body) {
        return Some(found);
    }
    let trimmed = body.trim();
    let text = if trimmed.starts_with('{') {
        trimmed.to_owned()
    } else {
        String::from_utf8(message::strict_base64(trimmed)?).ok()?
    };
    match serde_json::from_str::<Value>(&text).ok()? {
        Value::Object(object) if message::is_kombu_envelope(&object) => message::salvage(&object),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
