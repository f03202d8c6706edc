//! The Flask app's HTTP API, as the user tasks use it.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use taskbeat::TaskError;

/// The base URL setting.
pub const ENV_APP_API_BASE: &str = "APP_API_BASE";
/// Optional per-request timeout, seconds (default 10).
pub const ENV_APP_API_TIMEOUT: &str = "APP_API_TIMEOUT_SECS";

/// What went wrong talking to the app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A required setting is missing or wrong.
    #[error("{0}")]
    Setting(String),
    /// 404.
    #[error("{0} not found")]
    NotFound(String),
    /// Another 4xx: the app refused the request.
    #[error("the app refused the request ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The app's message.
        message: String,
    },
    /// 5xx, 429, timeout or connection failure: worth retrying.
    #[error("the app is unavailable: {0}")]
    Unavailable(String),
    /// A response that is not what the API documents.
    #[error("unexpected response from {url}: {message}")]
    BadResponse {
        /// The URL.
        url: String,
        /// What was wrong.
        message: String,
    },
}

impl From<ApiError> for TaskError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Unavailable(_) => TaskError::retryable("AppUnavailable", e.to_string()),
            ApiError::Setting(_) => TaskError::permanent("MissingSetting", e.to_string()),
            ApiError::NotFound(_) => TaskError::permanent("NotFound", e.to_string()),
            ApiError::Rejected { .. } => TaskError::permanent("Rejected", e.to_string()),
            ApiError::BadResponse { .. } => TaskError::permanent("BadResponse", e.to_string()),
        }
    }
}

/// A client of the app's API.
#[derive(Debug, Clone)]
pub struct AppApi {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl AppApi {
    /// The shared HTTP client (build once per process).
    pub fn http_client() -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("taskbeat-user/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default()
    }

    /// The API at `APP_API_BASE`, with the timeout of `APP_API_TIMEOUT_SECS`.
    pub fn from_env(http: reqwest::Client) -> Result<Self, ApiError> {
        let base = std::env::var(ENV_APP_API_BASE).ok().filter(|v| !v.trim().is_empty()).ok_or_else(|| {
            ApiError::Setting(format!("{ENV_APP_API_BASE} is not set: set it to the Flask app's API base URL, e.g. https://app.example.com/api"))
        })?;
        let timeout = match std::env::var(ENV_APP_API_TIMEOUT) {
            Ok(v) => Duration::from_secs(v.trim().parse().map_err(|_| {
                ApiError::Setting(format!("{ENV_APP_API_TIMEOUT} = {v:?} is not a whole number of seconds"))
            })?),
            Err(_) => Duration::from_secs(10),
        };
        Self::new(http, &base, timeout)
    }

    /// The API at `base`.
    pub fn new(http: reqwest::Client, base: &str, timeout: Duration) -> Result<Self, ApiError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ApiError::Setting(format!("{ENV_APP_API_BASE} = {base:?} is not an http(s) URL")));
        }
        Ok(AppApi { http, base: base.trim_end_matches('/').to_owned(), timeout })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// GET a JSON document.
    pub async fn get_json(&self, path: &str) -> Result<Value, ApiError> {
        self.get_query(path, &[] as &[(&str, String)]).await
    }

    /// GET with a query string, decoding the JSON response.
    pub async fn get_query<T: DeserializeOwned, Q: Serialize + ?Sized>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T, ApiError> {
        let url = self.url(path);
        let response = self.http.get(&url).query(query).timeout(self.timeout).send().await.map_err(transport)?;
        decode(&url, path, response).await
    }

    /// POST a JSON body, decoding the JSON response (an empty body reads as null).
    pub async fn post_json<B: Serialize + ?Sized>(&self, path: &str, body: &B) -> Result<Value, ApiError> {
        let url = self.url(path);
        let response = self.http.post(&url).json(body).timeout(self.timeout).send().await.map_err(transport)?;
        decode(&url, path, response).await
    }
}

fn transport(e: reqwest::Error) -> ApiError {
    // Only the kind of failure: a URL may carry credentials, so it stays out of records.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    ApiError::Unavailable(kind.to_owned())
}

async fn decode<T: DeserializeOwned>(url: &str, path: &str, response: reqwest::Response) -> Result<T, ApiError> {
    let status = response.status();
    let text = response.text().await.map_err(transport)?;
    if status.as_u16() == 404 {
        return Err(ApiError::NotFound(path.to_owned()));
    }
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(ApiError::Unavailable(format!("{path} answered {status}")));
    }
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").or_else(|| v.get("message")).and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(200).collect());
        return Err(ApiError::Rejected { status: status.as_u16(), message });
    }
    let text = if text.trim().is_empty() { "null" } else { text.as_str() };
    serde_json::from_str(text).map_err(|e| ApiError::BadResponse { url: url.to_owned(), message: e.to_string() })
}
