//! Celery task messages (task protocol v2) as kombu's SQS transport puts them on a queue.
//!
//! The SQS body is base64 of kombu's JSON envelope (`body`, `content-type`, `content-encoding`,
//! `headers`, `properties`), or that JSON as is when the transport's `sqs_base64_encoding`
//! option is off. The envelope's `body` is the serialized `[args, kwargs, embed]`, base64 again
//! when `properties.body_encoding` says so (kombu's default for SQS). The task's name, id,
//! retries, eta, expires, time limits and lineage are headers. Arguments are read from the body
//! only, never from `argsrepr`/`kwargsrepr`, which Celery truncates.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::envelope::{ENVELOPE_VERSION, Envelope, json_kind};

/// The content type of Celery's JSON serializer (`task_serializer = 'json'`).
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A Celery message turned into what the runtime runs.
#[derive(Debug, Clone, PartialEq)]
pub struct CeleryMessage {
    /// The task as taskbeat runs it: name, id, args, kwargs, retries, eta, expires, lineage.
    pub envelope: Envelope,
    /// Celery's `timelimit` header: (hard, soft), as `time_limit` and `soft_time_limit`.
    pub time_limit: (Option<Duration>, Option<Duration>),
    /// Celery's `group` header: the group the task belongs to.
    pub group: Option<String>,
}

impl CeleryMessage {
    /// The limit a run gets: the hard limit when the producer set one, else the soft one
    /// (taskbeat stops a task at one limit; there is no separate soft signal).
    pub fn run_limit(&self) -> Option<Duration> {
        self.time_limit.0.or(self.time_limit.1)
    }
}

/// Why a body that looks like a Celery message cannot be run. Each message says what to
/// change in the producer (the Flask app's Celery settings) where that is the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CeleryError {
    /// The kombu envelope is not a JSON object with the expected members.
    #[error("kombu envelope: {0}")]
    Envelope(String),
    /// A serializer other than JSON (pickle, yaml, msgpack).
    #[error(
        "Celery message with content type `{0}`: taskbeat reads JSON only; set task_serializer = 'json' \
         (and accept_content = ['json']) in the producer's Celery configuration"
    )]
    ContentType(String),
    /// A content encoding other than UTF-8.
    #[error(
        "Celery message with content encoding `{0}`: taskbeat reads UTF-8 JSON only; set task_serializer = 'json' \
         in the producer's Celery configuration"
    )]
    ContentEncoding(String),
    /// A compressed body (`task_compression`).
    #[error(
        "compressed Celery message (`{0}`): taskbeat reads uncompressed bodies; remove task_compression \
         (or the compression argument of send_task/apply_async) in the producer"
    )]
    Compressed(String),
    /// `properties.body_encoding` is not base64 (or absent).
    #[error(
        "Celery message with body_encoding `{0}`: kombu's SQS transport writes `base64`; taskbeat reads that or none"
    )]
    BodyEncoding(String),
    /// A task protocol 1 message.
    #[error(
        "Celery task protocol 1 message (task name and id in the body, not in headers): taskbeat reads protocol 2; \
         set task_protocol = 2 in the producer's Celery configuration (the default since Celery 4)"
    )]
    Protocol1,
    /// A header is missing or has the wrong type.
    #[error("Celery message header `{field}`: {message}")]
    Header {
        /// The header.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The inner body is not `[args, kwargs, embed]`.
    #[error("Celery message body: {0}")]
    Body(String),
    /// Canvas parts (link, link_error, chain, chord) taskbeat does not run.
    #[error(
        "Celery message with `{0}` set: taskbeat does not run Celery canvas workflows (link, link_error, chain, \
         chord); send the tasks one by one, or chain them inside the task with ctx.send"
    )]
    Canvas(&'static str),
}

impl CeleryError {
    /// What was wrong, without any value from the body: safe for logs.
    pub fn summary(&self) -> String {
        match self {
            CeleryError::Envelope(_) => "invalid kombu envelope".to_owned(),
            CeleryError::ContentType(_) => "Celery message not JSON (task_serializer)".to_owned(),
            CeleryError::ContentEncoding(_) => "Celery message not UTF-8 (task_serializer)".to_owned(),
            CeleryError::Compressed(_) => "compressed Celery message (task_compression)".to_owned(),
            CeleryError::BodyEncoding(_) => "unsupported Celery body_encoding".to_owned(),
            CeleryError::Protocol1 => "Celery task protocol 1 (task_protocol)".to_owned(),
            CeleryError::Header { field, .. } => format!("invalid Celery header `{field}`"),
            CeleryError::Body(_) => "invalid Celery message body".to_owned(),
            CeleryError::Canvas(what) => format!("Celery canvas `{what}` not supported"),
        }
    }
}

/// Whether a parsed JSON object has the shape of kombu's envelope (as opposed to taskbeat's).
pub fn is_kombu_envelope(object: &Map<String, Value>) -> bool {
    object.contains_key("body")
        && (object.contains_key("headers") || object.contains_key("properties") || object.contains_key("content-type"))
        && !object.contains_key("version")
}

/// Decodes SQS body text as standard base64 (with padding, as kombu writes it); `None` when it
/// is not exactly that.
pub fn strict_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.is_empty() || !text.len().is_multiple_of(4) {
        return None;
    }
    STANDARD.decode(text).ok()
}

/// Reads a kombu envelope (already parsed from JSON) as a Celery protocol 2 message.
pub fn from_kombu(object: &Map<String, Value>) -> Result<CeleryMessage, CeleryError> {
    let content_type = match object.get("content-type") {
        Some(Value::String(t)) => t.clone(),
        None | Some(Value::Null) => {
            return Err(CeleryError::Envelope("`content-type` is missing".into()));
        }
        Some(other) => {
            return Err(CeleryError::Envelope(format!("`content-type` is {}, not a string", json_kind(other))));
        }
    };
    let base_type = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if base_type != JSON_CONTENT_TYPE {
        return Err(CeleryError::ContentType(content_type));
    }
    match object.get("content-encoding") {
        None | Some(Value::Null) => {}
        Some(Value::String(e)) if matches!(e.to_ascii_lowercase().as_str(), "utf-8" | "utf8") => {}
        Some(Value::String(e)) => return Err(CeleryError::ContentEncoding(e.clone())),
        Some(other) => {
            return Err(CeleryError::Envelope(format!("`content-encoding` is {}, not a string", json_kind(other))));
        }
    }
    let headers = match object.get("headers") {
        Some(Value::Object(h)) => h,
        None | Some(Value::Null) => &Map::new(),
        Some(other) => return Err(CeleryError::Envelope(format!("`headers` is {}, not an object", json_kind(other)))),
    };
    let properties = match object.get("properties") {
        Some(Value::Object(p)) => p,
        None | Some(Value::Null) => &Map::new(),
        Some(other) => {
            return Err(CeleryError::Envelope(format!("`properties` is {}, not an object", json_kind(other))));
        }
    };
    if let Some(Value::String(compression)) = headers.get("compression") {
        return Err(CeleryError::Compressed(compression.clone()));
    }
    let Some(Value::String(body)) = object.get("body") else {
        return Err(CeleryError::Envelope("`body` is missing or not a string".into()));
    };
    let inner = match properties.get("body_encoding") {
        Some(Value::String(e)) if e == "base64" => {
            let bytes = STANDARD
                .decode(body.trim())
                .map_err(|e| CeleryError::Body(format!("body_encoding is base64 but the body is not base64 ({e})")))?;
            String::from_utf8(bytes).map_err(|_| CeleryError::Body("the decoded body is not UTF-8".into()))?
        }
        None | Some(Value::Null) => body.clone(),
        Some(Value::String(e)) => return Err(CeleryError::BodyEncoding(e.clone())),
        Some(other) => return Err(CeleryError::BodyEncoding(json_kind(other).to_owned())),
    };
    let payload: Value = serde_json::from_str(&inner)
        .map_err(|e| CeleryError::Body(format!("not JSON ({e}): expected [args, kwargs, embed]")))?;

    if !headers.contains_key("task") {
        // Protocol 1 keeps the task in the body: {"task": ..., "id": ..., "args": ...}.
        if payload.as_object().is_some_and(|o| o.contains_key("task") && o.contains_key("id")) {
            return Err(CeleryError::Protocol1);
        }
        return Err(CeleryError::Header {
            field: "task",
            message: "missing: a Celery protocol 2 message names its task in the `task` header".into(),
        });
    }
    let task = match headers.get("task") {
        Some(Value::String(t)) if !t.trim().is_empty() => t.clone(),
        Some(Value::String(_)) => return Err(header("task", "is empty")),
        Some(other) => return Err(header("task", format!("is {}, not a string", json_kind(other)))),
        None => return Err(header("task", "missing")),
    };
    let id = match headers.get("id") {
        Some(Value::String(t)) => Uuid::parse_str(t).map_err(|_| {
            header(
                "id",
                "is not a UUID: taskbeat keys task records by UUID; let Celery generate task ids \
                 (do not pass task_id= to send_task/apply_async)",
            )
        })?,
        None | Some(Value::Null) => return Err(header("id", "missing: every Celery task message has an `id` header")),
        Some(other) => return Err(header("id", format!("is {}, not a string", json_kind(other)))),
    };
    let retries = match headers.get("retries") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| header("retries", "is not a whole number >= 0"))?,
        Some(other) => return Err(header("retries", format!("is {}, not a number", json_kind(other)))),
    };
    let eta = time_header(headers, "eta")?;
    let expires = time_header(headers, "expires")?;
    let time_limit = match headers.get("timelimit") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Array(pair)) if pair.len() == 2 => (limit(&pair[0])?, limit(&pair[1])?),
        Some(_) => return Err(header("timelimit", "is not [time_limit, soft_time_limit] (seconds or null each)")),
    };
    let root_id = uuid_header(headers, "root_id")?;
    let parent_id = uuid_header(headers, "parent_id")?;
    let group = match headers.get("group") {
        None | Some(Value::Null) => None,
        Some(Value::String(g)) => Some(g.clone()),
        Some(other) => return Err(header("group", format!("is {}, not a string", json_kind(other)))),
    };
    let origin = headers.get("origin").and_then(Value::as_str).map(str::to_owned);

    let Value::Array(parts) = payload else {
        return Err(CeleryError::Body(format!("is {}, expected [args, kwargs, embed]", json_kind(&payload))));
    };
    if parts.len() != 3 {
        return Err(CeleryError::Body(format!("has {} items, expected 3: [args, kwargs, embed]", parts.len())));
    }
    let mut parts = parts.into_iter();
    let args = match parts.next() {
        Some(Value::Array(args)) => args,
        Some(other) => return Err(CeleryError::Body(format!("args is {}, not an array", json_kind(&other)))),
        None => Vec::new(),
    };
    let kwargs = match parts.next() {
        Some(Value::Object(kwargs)) => kwargs,
        Some(other) => return Err(CeleryError::Body(format!("kwargs is {}, not an object", json_kind(&other)))),
        None => Map::new(),
    };
    match parts.next() {
        Some(Value::Object(embed)) => {
            for (name, what) in
                [("callbacks", "link"), ("errbacks", "link_error"), ("chain", "chain"), ("chord", "chord")]
            {
                match embed.get(name) {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(items)) if items.is_empty() => {}
                    Some(_) => return Err(CeleryError::Canvas(what)),
                }
            }
        }
        Some(Value::Null) | None => {}
        Some(other) => return Err(CeleryError::Body(format!("embed is {}, not an object", json_kind(&other)))),
    }

    Ok(CeleryMessage {
        envelope: Envelope {
            version: ENVELOPE_VERSION,
            id,
            task,
            args,
            kwargs,
            retries,
            eta,
            expires,
            sent_at: None,
            origin,
            parent_id,
            root_id,
        },
        time_limit,
        group,
    })
}

/// The task id and name of a kombu envelope that failed to decode, when its headers still
/// carry them, so that its failure can be recorded where `AsyncResult(id)` looks.
pub fn salvage(object: &Map<String, Value>) -> Option<(Uuid, Option<String>)> {
    let headers = object.get("headers")?.as_object()?;
    let id = headers.get("id")?.as_str()?.parse().ok()?;
    let task = headers.get("task").and_then(Value::as_str).map(str::to_owned);
    Some((id, task))
}

fn header(field: &'static str, message: impl Into<String>) -> CeleryError {
    CeleryError::Header { field, message: message.into() }
}

/// An ISO-8601 time header (`eta`, `expires`). Celery writes them with an offset; a time
/// without one is taken as UTC (Celery's default `enable_utc`).
fn time_header(headers: &Map<String, Value>, field: &'static str) -> Result<Option<DateTime<Utc>>, CeleryError> {
    match headers.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            if let Ok(time) = DateTime::parse_from_rfc3339(text) {
                return Ok(Some(time.with_timezone(&Utc)));
            }
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|naive| Some(naive.and_utc()))
                .map_err(|_| header(field, "is not an ISO-8601 time (as Celery writes it: 2026-12-03T10:00:00+00:00)"))
        }
        Some(other) => Err(header(field, format!("is {}, not an ISO-8601 time string", json_kind(other)))),
    }
}

fn uuid_header(headers: &Map<String, Value>, field: &'static str) -> Result<Option<Uuid>, CeleryError> {
    match headers.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Uuid::parse_str(text).map(Some).map_err(|_| {
            header(field, "is not a UUID: taskbeat keys task records by UUID; let Celery generate task ids")
        }),
        Some(other) => Err(header(field, format!("is {}, not a string", json_kind(other)))),
    }
}

fn limit(value: &Value) -> Result<Option<Duration>, CeleryError> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0 && *s < 1.0e9)
            .map(|s| Some(Duration::from_secs_f64(s)))
            .ok_or_else(|| header("timelimit", "holds a limit that is not a positive number of seconds")),
        _ => Err(header("timelimit", "is not [time_limit, soft_time_limit] (seconds or null each)")),
    }
}
