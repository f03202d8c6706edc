//! Fetching and checking one token's metadata.
//!
//! Per token, never for the whole task: a 404, a document that is not JSON or not valid
//! metadata makes that token invalid. A 408, 429 or 5xx, a timeout or a connection failure is
//! tried again within the task ([`ATTEMPTS`] in all, short pauses); if it still fails the token
//! is recorded invalid with the reason `unavailable after 3 attempts: ...`, so one unpinned
//! IPFS document cannot hold a whole collection back. The tasks retry as a whole only when
//! every token was unavailable (the host or gateway is down).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, RETRY_AFTER};
use serde_json::Value;

use crate::metadata::{TokenMetadata, validate};
use crate::settings::NftSettings;
use crate::uri::{Source, resolve};

/// Tries of one fetch that keeps failing transiently.
pub const ATTEMPTS: usize = 3;
/// Pauses before the second and third tries.
const BACKOFF: [Duration; ATTEMPTS - 1] = [Duration::from_millis(200), Duration::from_millis(600)];
/// The longest `Retry-After` waited for within a task.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// The largest metadata document read.
pub const MAX_DOCUMENT: usize = 2 * 1024 * 1024;

/// What became of one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fetched and valid.
    Valid(TokenMetadata),
    /// Fetched (or decoded) and wrong, or refused by its host: the reason.
    Invalid(String),
    /// Still failing transiently after every try: the reason.
    Unavailable(String),
}

impl Outcome {
    /// The reason a token is not valid, as recorded.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Valid(_) => None,
            Outcome::Invalid(reason) | Outcome::Unavailable(reason) => Some(reason),
        }
    }
}

enum Failure {
    Permanent(String),
    Transient { reason: String, retry_after: Option<Duration> },
}

/// Fetches metadata with the module's settings.
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    settings: NftSettings,
}

impl Fetcher {
    /// The shared HTTP client (build once per process).
    pub fn http_client() -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("taskbeat-nftfair/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default()
    }

    /// A fetcher with these settings.
    pub fn new(http: reqwest::Client, settings: NftSettings) -> Self {
        Fetcher { http, settings }
    }

    /// Tokens fetched at once.
    pub fn concurrency(&self) -> usize {
        self.settings.concurrency
    }

    /// Resolves, fetches and checks one token URI.
    pub async fn fetch(&self, uri: &str) -> Outcome {
        let bytes = match resolve(uri, &self.settings.gateway) {
            Err(reason) => return Outcome::Invalid(reason),
            Ok(Source::Inline(bytes)) => bytes,
            Ok(Source::Http(url)) => match self.get_with_retries(&url).await {
                Ok(bytes) => bytes,
                Err(outcome) => return outcome,
            },
        };
        let document: Value = match serde_json::from_slice(&bytes) {
            Ok(document) => document,
            Err(e) => return Outcome::Invalid(format!("not JSON: {e}")),
        };
        match validate(&document) {
            Ok(meta) => Outcome::Valid(meta),
            Err(reason) => Outcome::Invalid(reason),
        }
    }

    async fn get_with_retries(&self, url: &str) -> Result<Vec<u8>, Outcome> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            match self.get(url).await {
                Ok(bytes) => return Ok(bytes),
                Err(Failure::Permanent(reason)) => return Err(Outcome::Invalid(reason)),
                Err(Failure::Transient { reason, retry_after }) => {
                    last = reason;
                    if let Some(pause) = BACKOFF.get(attempt) {
                        tokio::time::sleep(retry_after.unwrap_or(*pause).min(MAX_WAIT)).await;
                    }
                }
            }
        }
        Err(Outcome::Unavailable(format!("unavailable after {ATTEMPTS} attempts: {last}")))
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, Failure> {
        let mut response = self
            .http
            .get(url)
            .header(ACCEPT, "application/json")
            .timeout(self.settings.timeout)
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        let status = response.status();
        if !status.is_success() {
            let reason = format!("HTTP {status}");
            return Err(if matches!(status.as_u16(), 408 | 429 | 500..=599) {
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Failure::Transient { reason, retry_after }
            } else {
                Failure::Permanent(reason)
            });
        }
        if status == StatusCode::NO_CONTENT {
            return Err(Failure::Permanent("HTTP 204 No Content: no document".to_owned()));
        }
        if response.content_length().is_some_and(|n| n > MAX_DOCUMENT as u64) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(&e))? {
            if bytes.len() + chunk.len() > MAX_DOCUMENT {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// The kind of failure only: reqwest's message repeats the URL.
    fn transport(&self, e: &reqwest::Error) -> Failure {
        let transient = |reason: String| Failure::Transient { reason, retry_after: None };
        if e.is_timeout() {
            transient(format!("timed out after {} s", self.settings.timeout.as_secs_f64()))
        } else if e.is_connect() {
            transient("connection failed".to_owned())
        } else if e.is_redirect() {
            Failure::Permanent("too many redirects".to_owned())
        } else if e.is_builder() {
            Failure::Permanent("not a valid URL".to_owned())
        } else {
            transient("the connection broke".to_owned())
        }
    }
}

fn too_large() -> Failure {
    Failure::Permanent(format!("metadata is larger than {} MiB", MAX_DOCUMENT / (1024 * 1024)))
}
