//! An OpenAI-compatible chat completions client that streams (`stream: true`) and reports the
//! tokens received as they arrive.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskbeat::TaskError;

use crate::settings::{ApiKey, ChatSettings};
use crate::sse::{SseDecoder, SseError};

/// What went wrong talking to the chat API. Messages never carry the API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// A required setting is not set.
    #[error("{0}")]
    MissingSetting(String),
    /// A setting has a value that cannot work.
    #[error("{0}")]
    InvalidSetting(String),
    /// The task's arguments cannot make a request.
    #[error("{0}")]
    InvalidArguments(String),
    /// A 4xx (other than the retryable ones): the API's own message.
    #[error("the chat API refused the request ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// `error.message` of the API's answer.
        message: String,
    },
    /// 429, 5xx, a timeout or a connection failure: worth retrying.
    #[error("the chat API is unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The wait the server asked for (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The stream ended or failed before the reply was complete: worth retrying.
    #[error("the chat API's stream broke off: {0}")]
    Interrupted(String),
    /// An answer that is not what the API documents.
    #[error("unexpected answer from the chat API: {0}")]
    BadResponse(String),
}

impl From<ChatError> for TaskError {
    fn from(e: ChatError) -> Self {
        let message = e.to_string();
        match e {
            ChatError::MissingSetting(_) => TaskError::permanent("MissingSetting", message),
            ChatError::InvalidSetting(_) => TaskError::permanent("InvalidSetting", message),
            ChatError::InvalidArguments(_) => TaskError::permanent("InvalidArguments", message),
            ChatError::Rejected { .. } => TaskError::permanent("ChatApiRejected", message),
            ChatError::Unavailable { retry_after: Some(after), .. } => {
                TaskError::retry_after("ChatApiUnavailable", message, after)
            }
            ChatError::Unavailable { retry_after: None, .. } => TaskError::retryable("ChatApiUnavailable", message),
            ChatError::Interrupted(_) => TaskError::retryable("ChatStreamInterrupted", message),
            ChatError::BadResponse(_) => TaskError::permanent("ChatBadResponse", message),
        }
    }
}

/// The roles a message may have.
pub const ROLES: [&str; 4] = ["system", "developer", "user", "assistant"];

/// One message of a conversation, as the chat completions API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// One of [`ROLES`].
    pub role: String,
    /// The text.
    pub content: String,
    /// An optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A message with no name.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage { role: role.to_owned(), content: content.into(), name: None }
    }
}

/// Checks a conversation before it is sent: not empty, known roles.
pub fn check_messages(messages: &[ChatMessage]) -> Result<(), ChatError> {
    if messages.is_empty() {
        return Err(ChatError::InvalidArguments("`messages` is empty: pass at least one {role, content}".into()));
    }
    if let Some((i, m)) = messages.iter().enumerate().find(|(_, m)| !ROLES.contains(&m.role.as_str())) {
        return Err(ChatError::InvalidArguments(format!(
            "`messages[{i}].role` is {:?}: expected one of {}",
            m.role,
            ROLES.join(", ")
        )));
    }
    Ok(())
}

/// Token counts as the API reports them (summed over calls by the tasks that make several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens of the reply.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
    }
}

/// A request to the API.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionRequest {
    /// The model.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Longest reply, in tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

#[derive(Serialize)]
struct WireRequest<'a> {
    #[serde(flatten)]
    request: &'a CompletionRequest,
    stream: bool,
    stream_options: StreamOptions,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A finished reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The text.
    pub reply: String,
    /// Usage, when the server reported it.
    pub usage: Option<Usage>,
    /// The model that answered (as the server names it).
    pub model: String,
    /// Why the reply ended (`stop`, `length`, ...), when the server said.
    pub finish_reason: Option<String>,
    /// Content chunks received (about one token each).
    pub tokens: usize,
}

/// The chat API at the configured base.
#[derive(Debug, Clone)]
pub struct ChatApi {
    http: reqwest::Client,
    url: String,
    key: ApiKey,
    timeout: Duration,
}

/// The largest error body read (the message is near the start).
const MAX_ERROR_BODY: usize = 64 * 1024;

impl ChatApi {
    /// The shared HTTP client (build once per process). No overall timeout: a stream lasts as
    /// long as the reply; the wait for each chunk is bounded instead.
    pub fn http_client() -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("taskbeat-chat/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default()
    }

    /// A client for the configured server.
    pub fn new(http: reqwest::Client, settings: &ChatSettings) -> Self {
        ChatApi {
            http,
            url: format!("{}/v1/chat/completions", settings.base),
            key: settings.key.clone(),
            timeout: settings.timeout,
        }
    }

    /// Streams one completion. `on_tokens` is called with the number of content chunks so far
    /// each time one arrives.
    pub async fn complete<F, Fut>(&self, request: &CompletionRequest, mut on_tokens: F) -> Result<Completion, ChatError>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = ()>,
    {
        let body = WireRequest { request, stream: true, stream_options: StreamOptions { include_usage: true } };
        let send = self
            .http
            .post(&self.url)
            .bearer_auth(self.key.expose())
            .header(ACCEPT, "text/event-stream")
            .json(&body)
            .send();
        let mut response = match tokio::time::timeout(self.timeout, send).await {
            Err(_) => return Err(unavailable(format!("no answer within {} s", self.timeout.as_secs_f64()))),
            Ok(result) => result.map_err(|e| unavailable(transport(&e).to_owned()))?,
        };
        let status = response.status();
        if !status.is_success() {
            return Err(self.refusal(status, response).await);
        }
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if is_json {
            return Err(ChatError::BadResponse(
                "the server answered with JSON instead of an event stream: does it support `stream: true`?".into(),
            ));
        }

        let mut decoder = SseDecoder::new();
        let mut reply = Reply::new(&request.model);
        loop {
            let chunk = match tokio::time::timeout(self.timeout, response.chunk()).await {
                Err(_) => {
                    return Err(ChatError::Interrupted(format!(
                        "no data for {} s after {} tokens",
                        self.timeout.as_secs_f64(),
                        reply.tokens
                    )));
                }
                Ok(Err(e)) => {
                    return Err(ChatError::Interrupted(format!("{} after {} tokens", transport(&e), reply.tokens)));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            let events = decoder.feed(&chunk).map_err(|e: SseError| ChatError::BadResponse(e.to_string()))?;
            for event in events {
                let before = reply.tokens;
                if reply.accept(&event.data).map_err(|e| self.redact(e))? {
                    return reply.finish();
                }
                if reply.tokens > before {
                    on_tokens(reply.tokens).await;
                }
            }
        }
        decoder.finish();
        // Some servers close without `[DONE]`; a reply with a finish reason is complete anyway.
        if reply.finish_reason.is_some() {
            return reply.finish();
        }
        Err(ChatError::Interrupted(format!("the stream ended after {} tokens without a finish reason", reply.tokens)))
    }

    async fn refusal(&self, status: StatusCode, response: reqwest::Response) -> ChatError {
        let retry_after = retry_after(response.headers());
        let text = read_capped(response, MAX_ERROR_BODY).await;
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let message = parsed.as_ref().and_then(api_message).unwrap_or_else(|| {
            let text: String = text.trim().chars().take(200).collect();
            if text.is_empty() { status.canonical_reason().unwrap_or("no message").to_owned() } else { text }
        });
        let message = self.key.redact(&message);
        let code = parsed.as_ref().and_then(|v| v.pointer("/error/code")).and_then(Value::as_str);
        // A spent quota is also a 429, but waiting does not refill it.
        let retryable = matches!(status.as_u16(), 408 | 409 | 429 | 500..=599) && code != Some("insufficient_quota");
        if retryable {
            ChatError::Unavailable { message: format!("{} ({status})", message), retry_after }
        } else {
            ChatError::Rejected { status: status.as_u16(), message }
        }
    }

    fn redact(&self, e: ChatError) -> ChatError {
        match e {
            ChatError::Interrupted(m) => ChatError::Interrupted(self.key.redact(&m)),
            ChatError::BadResponse(m) => ChatError::BadResponse(self.key.redact(&m)),
            other => other,
        }
    }
}

fn unavailable(message: String) -> ChatError {
    ChatError::Unavailable { message, retry_after: None }
}

/// The kind of a transport failure only: reqwest's message names the URL.
fn transport(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "the connection broke"
    } else {
        "request failed"
    }
}

/// The error message of an OpenAI-style error body: `error.message`, `error` as a string, or
/// `message`.
fn api_message(body: &Value) -> Option<String> {
    let error = body.get("error");
    error
        .and_then(|e| e.get("message"))
        .or_else(|| error.filter(|e| e.is_string()))
        .or_else(|| body.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// `Retry-After` (seconds or an HTTP date), or `retry-after-ms` as OpenAI also sends.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let ms = headers.get("retry-after-ms").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
    // try_: a huge or negative value from the server must not panic the task.
    if let Some(wait) = ms.and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok()) {
        return Some(wait);
    }
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

async fn read_capped(mut response: reqwest::Response, limit: usize) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(limit);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[derive(Debug, Deserialize)]
struct WireChunk {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireChoice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<WireDelta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireDelta {
    #[serde(default)]
    content: Option<String>,
}

/// A reply being assembled from the stream's chunks.
#[derive(Debug)]
pub(crate) struct Reply {
    text: String,
    tokens: usize,
    model: String,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl Reply {
    pub(crate) fn new(requested_model: &str) -> Self {
        Reply { text: String::new(), tokens: 0, model: requested_model.to_owned(), finish_reason: None, usage: None }
    }

    /// Takes one event's data; true at `[DONE]`.
    pub(crate) fn accept(&mut self, data: &str) -> Result<bool, ChatError> {
        if data.trim() == "[DONE]" {
            return Ok(true);
        }
        let chunk: WireChunk = serde_json::from_str(data).map_err(|e| {
            ChatError::BadResponse(format!(
                "a stream chunk is not a chat completion chunk ({e}) after {} tokens",
                self.tokens
            ))
        })?;
        if let Some(error) = chunk.error {
            let message = api_message(&serde_json::json!({ "error": error })).unwrap_or_else(|| error.to_string());
            return Err(ChatError::Interrupted(format!("the server reported an error mid-stream: {message}")));
        }
        if let Some(model) = chunk.model.filter(|m| !m.is_empty()) {
            self.model = model;
        }
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        // One reply is asked for (n = 1): choice 0.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(content) = choice.delta.and_then(|d| d.content).filter(|c| !c.is_empty()) {
                self.text.push_str(&content);
                self.tokens += 1;
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        Ok(false)
    }

    pub(crate) fn finish(self) -> Result<Completion, ChatError> {
        Ok(Completion {
            reply: self.text,
            usage: self.usage,
            model: self.model,
            finish_reason: self.finish_reason,
            tokens: self.tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn assembles_a_reply_from_chunks() {
        let mut reply = Reply::new("asked");
        let chunks = [
            r#"{"model":"gpt-x","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7,"prompt_tokens_details":{}}}"#,
        ];
        for chunk in chunks {
            assert!(!reply.accept(chunk).unwrap());
        }
        assert!(reply.accept("[DONE]").unwrap());
        let done = reply.finish().unwrap();
        assert_eq!(done.reply, "Hello");
        assert_eq!(done.tokens, 2);
        assert_eq!(done.model, "gpt-x");
        assert_eq!(done.finish_reason.as_deref(), Some("stop"));
        assert_eq!(done.usage, Some(Usage { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 }));
    }

    #[test]
    fn a_mid_stream_error_and_garbage_are_errors() {
        let mut reply = Reply::new("m");
        let err = reply.accept(r#"{"error":{"message":"overloaded","type":"server_error"}}"#).unwrap_err();
        assert!(matches!(&err, ChatError::Interrupted(m) if m.contains("overloaded")), "{err}");
        assert!(matches!(reply.accept("{not json"), Err(ChatError::BadResponse(_))));
    }

    #[test]
    fn reads_retry_after_in_its_forms() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        headers.insert("retry-after-ms", HeaderValue::from_static("1e300"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)), "out of range: falls back to Retry-After");
        let mut headers = HeaderMap::new();
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822().replace("+0000", "GMT");
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&soon).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120), "{wait:?}");
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&headers), Some(Duration::ZERO), "a date in the past: no wait");
    }

    #[test]
    fn messages_are_checked() {
        assert!(check_messages(&[]).unwrap_err().to_string().contains("`messages` is empty"));
        let err = check_messages(&[ChatMessage::new("user", "hi"), ChatMessage::new("robot", "x")]).unwrap_err();
        assert!(err.to_string().contains("messages[1].role") && err.to_string().contains("assistant"), "{err}");
    }
}
