//! A local HTTP server standing in for a chat webhook (Slack, Feishu, DingTalk or a plain JSON
//! receiver) and for the HTTP targets a health check probes.
//!
//! Webhook: `POST` on any path (real webhook URLs carry their token in the path or the query)
//! records the request and answers with the next scripted [`Reply`], then `200 {"ok":true}` once
//! the script is used up.
//!
//! Health targets ([`spawn_targets`]): `GET /ok` 200, `GET /fail` 500, `GET /status/{code}` that
//! code, `GET /slow/{millis}` 200 after that delay, `GET /together/{n}` 200 once `n` such requests
//! are waiting at the same time (504 after 5 s without them: the caller does not probe in parallel).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::routing::{get, post};
use serde_json::Value;

/// One request the webhook received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The path, e.g. `/hooks/T000/SECRET`.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The `content-type` header.
    pub content_type: Option<String>,
    /// The body as JSON (`Value::String` with the raw text when it is not JSON).
    pub body: Value,
}

/// A scripted answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// `200 {"ok":true}`.
    pub fn ok() -> Self {
        Reply::json(200, r#"{"ok":true}"#)
    }

    /// `status` with a JSON body.
    pub fn json(status: u16, body: &str) -> Self {
        Reply {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.to_owned(),
        }
    }

    /// `status` with a plain-text body.
    pub fn text(status: u16, body: &str) -> Self {
        Reply { status, headers: vec![("content-type".to_owned(), "text/plain".to_owned())], body: body.to_owned() }
    }

    /// Adds a header (e.g. `Retry-After`).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

#[derive(Debug, Clone)]
struct WebhookState {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

/// A running webhook stand-in.
#[derive(Debug, Clone)]
pub struct FakeWebhook {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

impl FakeWebhook {
    /// A URL on this server (`path` may carry a query, e.g. `/robot/send?access_token=SECRET`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Queues more scripted replies after those not used yet.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(replies);
    }
}

/// Starts a webhook on a random 127.0.0.1 port, on the current runtime, answering `replies` in
/// order and `200 {"ok":true}` after them.
pub async fn spawn(replies: impl IntoIterator<Item = Reply>) -> FakeWebhook {
    let received = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(replies.into_iter().collect::<VecDeque<_>>()));
    let state = WebhookState { received: received.clone(), script: script.clone() };
    let app = Router::new().route("/{*path}", post(hook)).with_state(state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeWebhook { addr, received, script }
}

async fn hook(
    State(state): State<WebhookState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    let text = String::from_utf8_lossy(&body).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    state.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        content_type,
        body,
    });
    let reply = state.script.lock().unwrap().pop_front().unwrap_or_else(Reply::ok);
    let mut headers = HeaderMap::new();
    for (name, value) in &reply.headers {
        headers.insert(HeaderName::try_from(name.as_str()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    (StatusCode::from_u16(reply.status).unwrap(), headers, reply.body)
}

/// A running health-target server.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub addr: SocketAddr,
}

impl Targets {
    /// A URL on this server, e.g. `url("/ok")`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }
}

/// Starts the health targets on a random 127.0.0.1 port, on the current runtime.
pub async fn spawn_targets() -> Targets {
    let waiting = Arc::new((AtomicUsize::new(0), tokio::sync::Notify::new()));
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/fail", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "database unreachable") }))
        .route(
            "/status/{code}",
            get(|Path(code): Path<u16>| async move { (StatusCode::from_u16(code).unwrap(), "as asked") }),
        )
        .route(
            "/slow/{millis}",
            get(|Path(millis): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                "finally"
            }),
        )
        .route("/together/{n}", get(move |Path(n): Path<usize>| together(waiting.clone(), n)));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Targets { addr }
}

async fn together(waiting: Arc<(AtomicUsize, tokio::sync::Notify)>, n: usize) -> StatusCode {
    let (arrived, changed) = &*waiting;
    let wait = async {
        loop {
            // Registered before the check, so an arrival between the two is not missed.
            let notified = changed.notified();
            if arrived.load(Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    };
    arrived.fetch_add(1, Ordering::SeqCst);
    changed.notify_waiters();
    match tokio::time::timeout(Duration::from_secs(5), wait).await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::GATEWAY_TIMEOUT,
    }
}
