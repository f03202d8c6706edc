//! A local HTTP server standing in for an OpenAI-compatible chat completions API.
//!
//! `POST /v1/chat/completions` answers with a server-sent events stream, as the real API does
//! for `stream: true`: a role chunk, one chunk per piece of the reply, a chunk with the
//! `finish_reason`, a usage chunk when `stream_options.include_usage` is set, then
//! `data: [DONE]`. The bytes can be re-cut into chunks of any size (`Options::chunk_bytes`), so
//! a client sees events, lines and multi-byte characters split anywhere.
//!
//! What it answers is picked by a marker in the last message's content:
//! `[status 503]` 503, `[status 429]` 429 with `Retry-After: 7`, `[quota]` 429
//! `insufficient_quota`, `[status 400]` 400 `context_length_exceeded`, `[cut]` a stream that
//! breaks off before its end, `[garbage]` a data line that is not JSON. A request whose bearer
//! token is not `Options::api_key` gets a 401 whose message quotes the token it was given (the
//! real API masks it; quoting it whole lets tests prove a client keeps it out of its records).
//!
//! The reply is `Options::reply`, or else `summary #N of M messages` (N counts requests), so
//! a test can follow which answer went where.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde_json::{Value, json};

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The bearer token it accepts.
    pub api_key: String,
    /// The reply text; `None`: `summary #N of M messages`.
    pub reply: Option<String>,
    /// Characters per streamed piece (a "token").
    pub piece_chars: usize,
    /// Re-cut the whole stream into chunks of this many bytes (`None`: one chunk per event).
    pub chunk_bytes: Option<usize>,
    /// Pause before each chunk, so progress can be watched.
    pub chunk_delay: Duration,
    /// End lines with CRLF instead of LF.
    pub crlf: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            api_key: "sk-test-0123456789abcdef".to_owned(),
            reply: None,
            piece_chars: 3,
            chunk_bytes: None,
            chunk_delay: Duration::ZERO,
            crlf: false,
        }
    }
}

/// A running fake API.
#[derive(Debug, Clone)]
pub struct FakeOpenAi {
    pub addr: SocketAddr,
    /// Every request body received, in order.
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// The `Authorization` header of every request, in order.
    pub authorizations: Arc<Mutex<Vec<String>>>,
}

impl FakeOpenAi {
    /// The base URL (`CHAT_API_BASE`).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[derive(Debug, Clone)]
struct AppState {
    options: Options,
    requests: Arc<Mutex<Vec<Value>>>,
    authorizations: Arc<Mutex<Vec<String>>>,
}

/// Starts the server on a random 127.0.0.1 port, on the current runtime.
pub async fn spawn(options: Options) -> FakeOpenAi {
    spawn_on(options, 0).await
}

/// Starts the server on 127.0.0.1:`port` (0: any free port), on the current runtime.
pub async fn spawn_on(options: Options, port: u16) -> FakeOpenAi {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let authorizations = Arc::new(Mutex::new(Vec::new()));
    let state = AppState { options, requests: requests.clone(), authorizations: authorizations.clone() };
    let app = Router::new().route("/v1/chat/completions", post(completions)).with_state(state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeOpenAi { addr, requests, authorizations }
}

fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let body = json!({ "error": { "message": message, "type": kind, "param": null, "code": code } });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn completions(State(state): State<AppState>, headers: HeaderMap, body: String) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    state.authorizations.lock().unwrap().push(authorization.clone());
    let request: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}"), "invalid_request_error", None);
        }
    };
    let number = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(request.clone());
        requests.len()
    };
    let given = authorization.strip_prefix("Bearer ").unwrap_or("");
    if given != state.options.api_key {
        return error(
            StatusCode::UNAUTHORIZED,
            &format!("Incorrect API key provided: {given}. You can find your API key in your account settings."),
            "invalid_request_error",
            Some("invalid_api_key"),
        );
    }
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().and_then(|m| m["content"].as_str()).unwrap_or("").to_owned();
    if last.contains("[status 503]") {
        return error(StatusCode::SERVICE_UNAVAILABLE, "The server is overloaded. Please retry.", "server_error", None);
    }
    if last.contains("[status 429]") {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit reached for requests per minute.",
            "requests",
            Some("rate_limit_exceeded"),
        );
        response.headers_mut().insert(header::RETRY_AFTER, "7".parse().unwrap());
        return response;
    }
    if last.contains("[quota]") {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            Some("insufficient_quota"),
        );
    }
    if last.contains("[status 400]") {
        return error(
            StatusCode::BAD_REQUEST,
            "This model's maximum context length is 8192 tokens.",
            "invalid_request_error",
            Some("context_length_exceeded"),
        );
    }
    if request["stream"] != json!(true) {
        return error(StatusCode::BAD_REQUEST, "this stand-in only streams", "invalid_request_error", None);
    }
    let model = request["model"].as_str().unwrap_or("unknown").to_owned();
    let reply =
        state.options.reply.clone().unwrap_or_else(|| format!("summary #{number} of {} messages", messages.len()));
    let prompt_chars: usize = messages.iter().map(|m| m["content"].as_str().map_or(0, |c| c.chars().count())).sum();
    let stream = Stream {
        model,
        reply,
        max_tokens: request["max_tokens"].as_u64().map(|n| n as usize),
        include_usage: request["stream_options"]["include_usage"] == json!(true),
        prompt_tokens: prompt_chars.div_ceil(4).max(1),
        cut: last.contains("[cut]"),
        garbage: last.contains("[garbage]"),
    };
    let chunks = sse_chunks(&state.options, &stream);
    let delay = state.options.chunk_delay;
    let body = futures::stream::iter(chunks).then(move |chunk| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(Bytes::from(chunk))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap()
}

/// One streamed answer.
#[derive(Debug, Clone)]
pub struct Stream {
    pub model: String,
    pub reply: String,
    /// The request's `max_tokens`: the reply stops there with `finish_reason: length`.
    pub max_tokens: Option<usize>,
    pub include_usage: bool,
    pub prompt_tokens: usize,
    /// Break off after two pieces, without a finish reason or `[DONE]`.
    pub cut: bool,
    /// Send a data line that is not JSON.
    pub garbage: bool,
}

/// The pieces ("tokens") of a reply, `piece_chars` characters each.
pub fn pieces(reply: &str, piece_chars: usize) -> Vec<String> {
    let chars: Vec<char> = reply.chars().collect();
    chars.chunks(piece_chars.max(1)).map(|c| c.iter().collect()).collect()
}

/// The bytes of the stream, cut as `options` says.
pub fn sse_chunks(options: &Options, stream: &Stream) -> Vec<Vec<u8>> {
    let eol = if options.crlf { "\r\n" } else { "\n" };
    let event = |data: &str| format!("data: {data}{eol}{eol}");
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1_764_756_000,
            "model": stream.model,
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
            "usage": null,
        })
        .to_string()
    };
    let mut events = vec![
        format!(": keep-alive comment{eol}{eol}"),
        event(&chunk(json!({ "role": "assistant", "content": "" }), Value::Null)),
    ];
    let mut pieces = pieces(&stream.reply, options.piece_chars);
    let mut finish = "stop";
    if let Some(max) = stream.max_tokens.filter(|max| *max < pieces.len()) {
        pieces.truncate(max);
        finish = "length";
    }
    if stream.cut {
        pieces.truncate(2);
    }
    let completion_tokens = pieces.len();
    for piece in pieces {
        events.push(event(&chunk(json!({ "content": piece }), Value::Null)));
    }
    if stream.garbage {
        events.push(event("{\"choices\": [ this is not json"));
    }
    if !stream.cut {
        events.push(event(&chunk(json!({}), json!(finish))));
        if stream.include_usage {
            let usage = json!({
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 1_764_756_000,
                "model": stream.model,
                "choices": [],
                "usage": {
                    "prompt_tokens": stream.prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": stream.prompt_tokens + completion_tokens,
                    "prompt_tokens_details": { "cached_tokens": 0 },
                },
            });
            events.push(event(&usage.to_string()));
        }
        events.push(event("[DONE]"));
    }
    match options.chunk_bytes {
        None => events.into_iter().map(String::into_bytes).collect(),
        Some(size) => events.concat().into_bytes().chunks(size.max(1)).map(<[u8]>::to_vec).collect(),
    }
}
