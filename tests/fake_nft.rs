//! A local HTTP server standing in for NFT metadata hosts: a plain HTTP metadata API and an
//! IPFS gateway (`/ipfs/{CID}/{path}`), both served from one table of documents.
//!
//! Each document is keyed by its request path without the leading `/` (`meta/1`,
//! `ipfs/QmCollection/7`); a path not in the table is a 404. Every request is counted per path,
//! so tests can see retries, and the most requests in flight at once is kept.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What the server answers for one path.
#[derive(Debug, Clone)]
pub enum Doc {
    /// 200 with this JSON.
    Json(Value),
    /// 200 with this text (served as `text/plain`, as IPFS gateways often do).
    Text(String),
    /// This status, with an empty body.
    Status(u16),
    /// 200 with this JSON, after a pause (a slow host, for timeouts and progress).
    Slow(Duration, Value),
    /// `status` for the first `failures` requests, then 200 with the JSON.
    FailFirst { failures: usize, status: u16, then: Value },
}

/// A running fake metadata host.
#[derive(Debug, Clone)]
pub struct FakeNft {
    pub addr: SocketAddr,
    /// Requests per path.
    pub hits: Arc<Mutex<BTreeMap<String, usize>>>,
    /// The most requests that were in flight at once.
    pub peak: Arc<AtomicUsize>,
}

impl FakeNft {
    /// The base URL of the plain HTTP host, e.g. `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The gateway URL (`IPFS_GATEWAY`), ending in `/ipfs/`.
    pub fn gateway(&self) -> String {
        format!("http://{}/ipfs/", self.addr)
    }

    /// The most requests that were in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Requests made for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
struct AppState {
    docs: Arc<BTreeMap<String, Doc>>,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A valid ERC-721 metadata document with these traits.
pub fn token(name: &str, traits: &[(&str, Value)]) -> Value {
    let attributes: Vec<Value> =
        traits.iter().map(|(trait_type, value)| json!({ "trait_type": trait_type, "value": value })).collect();
    json!({
        "name": name,
        "description": format!("{name}, a token of the test collection"),
        "image": format!("ipfs://QmImages/{}.png", name.replace(' ', "_")),
        "attributes": attributes,
    })
}

/// Starts the server on a random 127.0.0.1 port, on the current runtime.
pub async fn spawn(docs: BTreeMap<String, Doc>) -> FakeNft {
    spawn_on(docs, 0).await
}

/// Starts the server on 127.0.0.1:`port` (0: any free port), on the current runtime.
pub async fn spawn_on(docs: BTreeMap<String, Doc>, port: u16) -> FakeNft {
    let hits = Arc::new(Mutex::new(BTreeMap::new()));
    let peak = Arc::new(AtomicUsize::new(0));
    let state = AppState {
        docs: Arc::new(docs),
        hits: hits.clone(),
        in_flight: Arc::new(AtomicUsize::new(0)),
        peak: peak.clone(),
    };
    let app = Router::new().fallback(serve).with_state(state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeNft { addr, hits, peak }
}

async fn serve(State(state): State<AppState>, uri: Uri) -> Response {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _in_flight = InFlight(state.in_flight.clone());
    state.peak.fetch_max(now, Ordering::SeqCst);
    let path = uri.path().trim_start_matches('/').to_owned();
    let hit = {
        let mut hits = state.hits.lock().unwrap();
        let count = hits.entry(path.clone()).or_insert(0);
        *count += 1;
        *count
    };
    let json = |value: &Value| {
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
    };
    let status = |code: u16| StatusCode::from_u16(code).unwrap().into_response();
    match state.docs.get(&path) {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(Doc::Json(value)) => json(value),
        Some(Doc::Text(text)) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text.clone()).into_response(),
        Some(Doc::Status(code)) => status(*code),
        Some(Doc::Slow(pause, value)) => {
            tokio::time::sleep(*pause).await;
            json(value)
        }
        Some(Doc::FailFirst { failures, status: code, then }) => {
            if hit <= *failures {
                status(*code)
            } else {
                json(then)
            }
        }
    }
}
