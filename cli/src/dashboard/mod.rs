//! The dashboard: what Flower showed, for taskbeat, on both backends. `taskbeat dashboard`
//! serves it, and so does `taskbeat local`.
//!
//! One page shell (HTML, CSS and plain JavaScript compiled into the binary: nothing to build
//! or download on the user's machine) renders five views from a JSON API whose documents are
//! the CLI's own `--output json` documents: tasks, one task, queues and dead letters,
//! schedules, charts (SVG drawn here with plotters).
//!
//! Access: loopback by default, where only this machine reaches it, and then only under a
//! loopback host name (a page elsewhere cannot rebind its own name to 127.0.0.1 and read the
//! API). Any other address needs a token. Every request that changes something is a POST
//! carrying the `X-Taskbeat` header, which a cross-site form cannot send.

mod charts;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use taskbeat::store::{ListCursor, ListFilter, list_tasks};
use taskbeat::{TaskState, store::StoreError};
use uuid::Uuid;

use crate::{Setup, modules, ops, schedules};

/// Where the dashboard listens unless told otherwise.
pub const DEFAULT_BIND: &str = "127.0.0.1:8642";
/// The shortest token accepted: anything shorter is guessable.
const MIN_TOKEN_LEN: usize = 16;
/// The cookie a browser keeps the token in after opening `/?token=...` once, followed by the
/// port (cookies do not tell ports apart: two dashboards on one host keep one each).
const TOKEN_COOKIE: &str = "taskbeat_dashboard_";
/// The header every state-changing request carries (the page's script sends it).
const ACTION_HEADER: &str = "x-taskbeat";
/// Tasks per page unless the request says otherwise, and the most it may ask for.
const PAGE_DEFAULT: usize = 50;
const PAGE_MAX: usize = 1000;
/// Dead letters shown per queue.
const DEAD_LETTER_LIMIT: usize = 100;

const PAGE_HTML: &str = include_str!("page.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Address to listen on. Only loopback is open without a token.
    #[arg(long, default_value = DEFAULT_BIND, env = "TASKBEAT_DASHBOARD_BIND")]
    bind: SocketAddr,
    /// The token requests must carry (header `Authorization: Bearer TOKEN`, or open
    /// `/?token=TOKEN` once in a browser); required to listen on a non-loopback address.
    #[arg(long, env = "TASKBEAT_DASHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// The dashboard's options inside `taskbeat local`.
#[derive(Debug, Args)]
pub struct LocalDashboardArgs {
    /// Where `taskbeat local` serves the dashboard (port 0: any free port).
    #[arg(long = "dashboard-bind", default_value = DEFAULT_BIND, env = "TASKBEAT_DASHBOARD_BIND")]
    bind: SocketAddr,
    /// The dashboard's token (see `taskbeat dashboard --help`).
    #[arg(long = "dashboard-token", env = "TASKBEAT_DASHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Do not serve the dashboard.
    #[arg(long)]
    no_dashboard: bool,
}

/// A listening dashboard, not yet serving.
pub struct Bound {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound").field("address", &self.state.address).finish_non_exhaustive()
    }
}

struct AppState {
    setup: Arc<Setup>,
    aws: bool,
    token: Option<String>,
    address: SocketAddr,
    /// The charts' numbers, read once for the page's three requests (data and two pictures).
    charts: tokio::sync::Mutex<Option<(std::time::Instant, Arc<charts::ChartData>)>>,
}

/// How long the charts' numbers are reused.
const CHART_DATA_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl AppState {
    async fn chart_data(&self) -> Result<Arc<charts::ChartData>, ApiError> {
        // Held while reading, so that concurrent requests wait for one read instead of each doing it.
        let mut cached = self.charts.lock().await;
        if let Some((at, data)) = cached.as_ref()
            && at.elapsed() < CHART_DATA_TTL
        {
            return Ok(data.clone());
        }
        let data = Arc::new(charts::collect(self.setup.backend.store.as_ref(), Utc::now()).await.map_err(store_error)?);
        *cached = Some((std::time::Instant::now(), data.clone()));
        Ok(data)
    }
}

/// Checks the options and binds the address: a non-loopback address without a token is refused.
pub async fn bind(setup: Arc<Setup>, address: SocketAddr, token: Option<String>, aws: bool) -> Result<Bound> {
    let token = token.filter(|t| !t.is_empty());
    if let Some(token) = &token {
        // It travels in a header and a cookie: visible ASCII without a cookie's separators.
        if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic() || matches!(c, ';' | ',' | '"' | '\\')) {
            bail!(
                "the dashboard token may hold letters, digits and visible ASCII punctuation only, not {bad:?} \
                 (e.g. `openssl rand -hex 16`)"
            );
        }
        if token.len() < MIN_TOKEN_LEN {
            bail!(
                "the dashboard token is {} characters; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 16`)",
                token.len()
            );
        }
    }
    if !address.ip().is_loopback() && token.is_none() {
        bail!(
            "the dashboard can revoke, retry and redrive tasks: to listen on {address}, which other machines may \
             reach, give it a token (--token, or TASKBEAT_DASHBOARD_TOKEN; e.g. `openssl rand -hex 16`), or listen \
             on 127.0.0.1"
        );
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (in use? pick another with --bind / --dashboard-bind)"))?;
    let address = listener.local_addr().context("cannot read the dashboard's address")?;
    let charts = tokio::sync::Mutex::new(None);
    Ok(Bound { listener, state: Arc::new(AppState { setup, aws, token, address, charts }) })
}

impl Bound {
    /// The banner line: where to open it, and how when it needs the token (never printed).
    pub fn banner(&self) -> String {
        let host = if self.state.address.ip().is_unspecified() {
            format!("<this host>:{}", self.state.address.port())
        } else {
            self.state.address.to_string()
        };
        match self.state.token {
            Some(_) => format!("http://{host}/  (token required: open /?token=YOUR_TOKEN once)"),
            None => format!("http://{host}/"),
        }
    }

    /// Serves until the process ends.
    pub async fn serve(self) -> Result<()> {
        let app = router(self.state);
        axum::serve(self.listener, app).await.context("the dashboard server stopped")
    }
}

/// `taskbeat dashboard`: serves the dashboard until Ctrl-C.
pub async fn run(setup: Setup, args: DashboardArgs, aws: bool) -> Result<i32> {
    let bound = bind(Arc::new(setup), args.bind, args.token, aws).await?;
    eprintln!("taskbeat dashboard: {}", bound.banner());
    eprintln!("  data: {}", bound.state.setup.backend.location);
    eprintln!("  Ctrl-C stops");
    tokio::select! {
        result = bound.serve() => result?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}

/// Binds the dashboard of `taskbeat local`; a busy port is a warning, not a reason not to run.
pub async fn for_local(setup: Arc<Setup>, args: LocalDashboardArgs, aws: bool) -> Result<Option<Bound>> {
    if args.no_dashboard {
        return Ok(None);
    }
    let busy_is_fine = args.bind.to_string() == DEFAULT_BIND;
    match bind(setup, args.bind, args.token, aws).await {
        Ok(bound) => Ok(Some(bound)),
        Err(e) if busy_is_fine && e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some()) => {
            eprintln!("  dashboard: not served: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/tasks/{id}", get(page))
        .route("/queues", get(page))
        .route("/schedules", get(page))
        .route("/charts", get(page))
        .route("/static/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/static/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }))
        .route("/api/info", get(info))
        .route("/api/registered", get(registered))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task))
        .route("/api/tasks/{id}/revoke", post(revoke))
        .route("/api/tasks/{id}/retry", post(retry))
        .route("/api/queues", get(queues))
        .route("/api/dead-letters", get(dead_letters))
        .route("/api/dead-letters/redrive", post(redrive))
        .route("/api/schedules", get(schedule_list))
        .route("/api/schedules/{name}/run", post(schedule_run))
        .route("/api/schedules/{name}/enable", post(|s, p| schedule_switch(s, p, true)))
        .route("/api/schedules/{name}/disable", post(|s, p| schedule_switch(s, p, false)))
        .route("/api/charts", get(chart_data))
        .route("/charts/throughput.svg", get(throughput_svg))
        .route("/charts/durations.svg", get(durations_svg))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Access

/// Equal secrets, compared in time that does not depend on where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The values of this dashboard's token cookie (a browser may send more than one).
fn cookie_tokens(headers: &HeaderMap, port: u16) -> impl Iterator<Item = &str> {
    let name = format!("{TOKEN_COOKIE}{port}=");
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| pair.trim().strip_prefix(name.as_str()))
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn query_token(query: Option<&str>) -> Option<String> {
    url_pairs(query.unwrap_or_default()).find(|(k, _)| k == "token").map(|(_, v)| v)
}

/// `a=1&b=two`, decoded as a form (percent escapes and `+`).
fn url_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned()))
}

/// Whether a Host header names this machine's loopback (any port).
fn loopback_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, port)) => (name, port.strip_prefix(':').or(port.is_empty().then_some(""))),
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, Some("")),
        },
    };
    let port_ok = port.is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && (name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"taskbeat\""));
    }
    response
}

async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    match &state.token {
        None => {
            let hosts: Vec<&str> = headers.get_all(header::HOST).iter().filter_map(|h| h.to_str().ok()).collect();
            let host = hosts.first().copied().unwrap_or_default();
            if hosts.len() != 1 || !loopback_host(host) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "this dashboard listens on loopback without a token and answers only to localhost or \
                         127.0.0.1 (asked for `{host}`); to reach it from elsewhere, start it with --bind and --token"
                    ),
                );
            }
        }
        Some(token) => {
            let from_query = query_token(request.uri().query());
            let port = state.address.port();
            let ok = bearer_token(headers).is_some_and(|g| same_secret(g, token))
                || cookie_tokens(headers, port).any(|g| same_secret(g, token));
            let query_ok = from_query.as_deref().is_some_and(|g| same_secret(g, token));
            if !ok && !query_ok {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "this dashboard needs its token: open /?token=YOUR_TOKEN once in the browser, or send \
                     `Authorization: Bearer YOUR_TOKEN`"
                        .into(),
                );
            }
            if query_ok && request.method() == Method::GET && !request.uri().path().starts_with("/api/") {
                // Keep the token in a cookie, out of the address bar and the browser history.
                let cookie =
                    format!("{TOKEN_COOKIE}{}={token}; HttpOnly; SameSite=Strict; Path=/", state.address.port());
                let rest: String = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(url_pairs(request.uri().query().unwrap_or_default()).filter(|(k, _)| k != "token"))
                    .finish();
                let location = match rest.is_empty() {
                    true => request.uri().path().to_owned(),
                    false => format!("{}?{rest}", request.uri().path()),
                };
                let mut response = StatusCode::SEE_OTHER.into_response();
                if let (Ok(cookie), Ok(location)) = (HeaderValue::from_str(&cookie), HeaderValue::from_str(&location)) {
                    response.headers_mut().insert(header::SET_COOKIE, cookie);
                    response.headers_mut().insert(header::LOCATION, location);
                }
                return response;
            }
        }
    }
    if request.method() == Method::POST && request.headers().get(ACTION_HEADER).is_none() {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("a request that changes something must carry the `{ACTION_HEADER}` header (the page sends it)"),
        );
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

// ---------------------------------------------------------------------------------------------
// Pages

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn page() -> Response {
    let mut response = asset("text/html; charset=utf-8", PAGE_HTML);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'"),
    );
    response
}

// ---------------------------------------------------------------------------------------------
// API

/// An API error: its status and the message the page shows.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        refuse(self.0, self.1)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

/// The error of an operator's action (a conflict with the task's state, an unknown name).
fn conflict(e: anyhow::Error) -> ApiError {
    ApiError(StatusCode::CONFLICT, format!("{e:#}"))
}

type ApiResult = Result<Json<Value>, ApiError>;

async fn info(State(state): State<Arc<AppState>>) -> ApiResult {
    let setup = &state.setup;
    Ok(Json(json!({
        "backend": if state.aws { "aws" } else { "embedded" },
        "location": setup.backend.location,
        "manifest": setup.manifest_origin,
        "project": setup.manifest.project.name,
        "version": env!("CARGO_PKG_VERSION"),
        "states": TaskState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    })))
}

/// The task names the linked modules register, for the tasks page's filter.
async fn registered() -> ApiResult {
    let mut names: Vec<String> =
        modules::linked().iter().flat_map(|(_, r)| r.names().map(str::to_owned).collect::<Vec<_>>()).collect();
    names.sort();
    Ok(Json(json!({ "tasks": names })))
}

#[derive(Debug, Deserialize)]
struct TasksQuery {
    state: Option<String>,
    task: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn bad_request(message: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message)
}

async fn tasks(State(state): State<Arc<AppState>>, Query(query): Query<TasksQuery>) -> ApiResult {
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let filter = ListFilter {
        state: nonempty(query.state)
            .map(|s| s.parse::<TaskState>())
            .transpose()
            .map_err(|e| bad_request(e.to_string()))?,
        task: nonempty(query.task),
        since: nonempty(query.since).map(|s| ops::parse_since(&s)).transpose().map_err(bad_request)?,
    };
    let cursor =
        nonempty(query.cursor).map(|c| c.parse::<ListCursor>()).transpose().map_err(|e| bad_request(format!("{e}")))?;
    let limit = match nonempty(query.limit) {
        None => PAGE_DEFAULT,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| bad_request(format!("limit `{text}` is not a number of tasks (1 to {PAGE_MAX})")))?
            .clamp(1, PAGE_MAX),
    };
    let page = list_tasks(state.setup.backend.store.as_ref(), &filter, cursor.as_ref(), limit)
        .await
        .map_err(|e| ApiError::from(anyhow::Error::from(e)))?;
    Ok(Json(ops::list_json(&page, Utc::now())))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| bad_request(format!("`{id}` is not a task id (a UUID)")))
}

async fn task(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let record = state.setup.backend.store.get(id).await.map_err(|e| ApiError::from(anyhow::Error::from(e)))?;
    match record {
        Some(record) => Ok(Json(serde_json::to_value(&record).map_err(anyhow::Error::from)?)),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no task {id} in {}", state.setup.backend.location))),
    }
}

async fn revoke(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let was = crate::revoke_task(&state.setup, id, "revoked by an operator (dashboard)").await.map_err(conflict)?;
    Ok(Json(json!({ "id": id, "state": "REVOKED", "previous_state": was })))
}

async fn retry(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let (new_id, record) = ops::retry_task(&state.setup, id).await.map_err(conflict)?;
    Ok(Json(json!({ "id": new_id, "retry_of": record.id, "task": record.task })))
}

async fn queues(State(state): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(Value::Array(ops::queue_entries(&state.setup).await?)))
}

#[derive(Debug, Deserialize)]
struct QueueQuery {
    queue: Option<String>,
}

async fn dead_letters(State(state): State<Arc<AppState>>, Query(query): Query<QueueQuery>) -> ApiResult {
    let queue = query.queue.filter(|q| !q.is_empty());
    let found = ops::find_dead_letters(&state.setup, queue.as_deref(), DEAD_LETTER_LIMIT).await.map_err(conflict)?;
    Ok(Json(ops::dead_letters_json(&found)))
}

#[derive(Debug, Deserialize)]
struct RedriveRequest {
    queue: Option<String>,
    message: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn redrive(State(state): State<Arc<AppState>>, Json(request): Json<RedriveRequest>) -> ApiResult {
    if request.message.is_none() && !request.all {
        return Err(bad_request("say which dead letters: `message` (an id) or `all: true`".into()));
    }
    let reports =
        ops::redrive(&state.setup, request.queue.as_deref(), request.message.clone()).await.map_err(conflict)?;
    Ok(Json(ops::redrive_json(&reports)))
}

async fn schedule_list(State(state): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(Value::Array(schedules::schedules_json(&state.setup, state.aws).await?)))
}

async fn schedule_run(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult {
    let id = schedules::send_now(&state.setup, &name).await.map_err(conflict)?;
    Ok(Json(json!({ "id": id, "schedule": name })))
}

async fn schedule_switch(State(state): State<Arc<AppState>>, Path(name): Path<String>, enabled: bool) -> ApiResult {
    let info = schedules::set_rule_enabled(&state.setup, &name, enabled, state.aws).await.map_err(conflict)?;
    Ok(Json(json!({ "schedule": name, "rule": info.name, "enabled": info.enabled })))
}

async fn chart_data(State(state): State<Arc<AppState>>) -> ApiResult {
    Ok(Json(state.chart_data().await?.json()))
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::from(anyhow::Error::from(e))
}

fn svg(body: String) -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response()
}

async fn throughput_svg(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    Ok(svg(charts::throughput_svg(&*state.chart_data().await?)?))
}

async fn durations_svg(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    Ok(svg(charts::durations_svg(&*state.chart_data().await?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("0123456789abcdef", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcdeX", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcde", "0123456789abcdef"));
        assert!(!same_secret("", "0123456789abcdef"));
    }

    #[test]
    fn loopback_hosts_only() {
        for host in ["localhost:8642", "127.0.0.1:8642", "[::1]:8642", "LOCALHOST", "127.0.0.1", "[::1]"] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:8642",
            "10.0.0.5:8642",
            "",
            "localhost.evil.example:80",
            "[fe80::1]:1",
            "127.0.0.1:8642@evil.example",
            "[::1]x",
            "[::1",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }

    #[test]
    fn tokens_come_from_header_cookie_or_query() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static(
                "taskbeat_dashboard_8642=old; other=1; taskbeat_dashboard_8642=xyz; taskbeat_dashboard_9=n",
            ),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        assert_eq!(cookie_tokens(&headers, 8642).collect::<Vec<_>>(), ["old", "xyz"]);
        assert_eq!(query_token(Some("state=SUCCESS&token=a%2Bb+c")).as_deref(), Some("a+b c"));
        assert_eq!(query_token(Some("state=SUCCESS")), None);
        assert_eq!(query_token(Some("token=%e4%b8%ad%")).as_deref(), Some("中%"));
    }
}
