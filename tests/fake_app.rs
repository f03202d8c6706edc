//! A local HTTP server standing in for the Flask app's user API.
//!
//! - `GET /users/{id}`: 404 for ids starting with `missing`, 503 for `down`, else the user.
//! - `POST /users/{id}/outcome`, `POST /users/{id}/deactivate`: recorded, 200.
//! - `GET /users/inactive?days=&cursor=`: `inactive` users, `page_size` per page, with a cursor.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Default)]
pub struct Calls {
    /// GETs of each user: how many times a task body fetched it.
    pub gets: std::collections::HashMap<String, usize>,
    pub outcomes: Vec<(String, Value)>,
    /// Bodies posted to `/hooks/...`.
    pub hooks: Vec<Value>,
    pub deactivated: Vec<String>,
    pub inactive_queries: Vec<(u32, Option<String>)>,
}

#[derive(Debug, Clone)]
struct AppState {
    calls: Arc<Mutex<Calls>>,
    inactive: Vec<String>,
    page_size: usize,
    delay: Duration,
}

/// A running fake app.
#[derive(Debug, Clone)]
pub struct FakeApp {
    pub addr: SocketAddr,
    pub calls: Arc<Mutex<Calls>>,
}

impl FakeApp {
    /// The base URL (`APP_API_BASE`).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Users the inactive listing returns.
    pub inactive: Vec<String>,
    /// Users per page of the inactive listing.
    pub page_size: usize,
    /// Added to each GET of a user, so progress can be watched.
    pub delay: Duration,
}

/// Starts the server on a random 127.0.0.1 port, on the current runtime.
pub async fn spawn(options: Options) -> FakeApp {
    spawn_on(options, 0).await
}

/// Starts the server on 127.0.0.1:`port` (0: any free port), on the current runtime.
pub async fn spawn_on(options: Options, port: u16) -> FakeApp {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let state = AppState {
        calls: calls.clone(),
        inactive: options.inactive,
        page_size: options.page_size.max(1),
        delay: options.delay,
    };
    let app = Router::new()
        .route("/users/inactive", get(inactive))
        .route("/users/{id}", get(user))
        .route("/users/{id}/outcome", post(outcome))
        .route("/users/{id}/deactivate", post(deactivate))
        // A webhook for the alert module's `send_alert` when trying it by hand.
        .route("/hooks/{*path}", post(hook))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeApp { addr, calls }
}

/// Starts the server on its own thread and runtime (for tests that block, e.g. on a child process).
pub fn spawn_detached(options: Options) -> FakeApp {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.block_on(async move {
            tx.send(spawn(options).await).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

async fn user(State(state): State<AppState>, Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    *state.calls.lock().unwrap().gets.entry(id.clone()).or_default() += 1;
    tokio::time::sleep(state.delay).await;
    if id.starts_with("missing") {
        return (StatusCode::NOT_FOUND, Json(json!({ "error": "no such user" })));
    }
    if id.starts_with("down") {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "maintenance" })));
    }
    (
        StatusCode::OK,
        Json(json!({ "id": id, "name": format!("User {id}"), "email": format!("{id}@example.com"), "bio": "" })),
    )
}

async fn outcome(State(state): State<AppState>, Path(id): Path<String>, Json(body): Json<Value>) -> Json<Value> {
    state.calls.lock().unwrap().outcomes.push((id, body));
    Json(json!({ "ok": true }))
}

async fn hook(State(state): State<AppState>, Json(body): Json<Value>) -> Json<Value> {
    state.calls.lock().unwrap().hooks.push(body);
    Json(json!({ "ok": true }))
}

async fn deactivate(State(state): State<AppState>, Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    if id.starts_with("missing") {
        return (StatusCode::NOT_FOUND, Json(json!({ "error": "gone" })));
    }
    state.calls.lock().unwrap().deactivated.push(id);
    (StatusCode::OK, Json(json!({ "ok": true })))
}

#[derive(Debug, Deserialize)]
struct InactiveQuery {
    days: u32,
    cursor: Option<String>,
}

async fn inactive(State(state): State<AppState>, Query(q): Query<InactiveQuery>) -> Json<Value> {
    state.calls.lock().unwrap().inactive_queries.push((q.days, q.cursor.clone()));
    let start: usize = q.cursor.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0);
    let end = (start + state.page_size).min(state.inactive.len());
    let users: Vec<Value> = state.inactive[start.min(end)..end].iter().map(|id| json!({ "id": id })).collect();
    let next = (end < state.inactive.len()).then(|| end.to_string());
    Json(json!({ "users": users, "next_cursor": next, "total": state.inactive.len() }))
}
