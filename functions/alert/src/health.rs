//! `check_health`: probes HTTP targets concurrently and raises one alert for the failing ones.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use taskbeat::{TaskContext, TaskError};
use tokio::time::Instant;
use uuid::Uuid;

use crate::webhook::Level;
use crate::{SEND_ALERT, dedup_key, describe_transport, http_client, seconds_text, within_time_left};

/// Probes in flight at once.
const CONCURRENCY: usize = 16;
/// The longest per-target timeout accepted, seconds.
const MAX_TIMEOUT_SECS: f64 = 120.0;
/// Time kept after the probes to send the alert.
const ALERT_RESERVE: Duration = Duration::from_secs(3);

/// Arguments of `check_health(targets)`.
#[derive(Debug, Deserialize)]
pub struct CheckHealth {
    /// What to probe.
    pub targets: Vec<Target>,
}

/// One HTTP target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The name alerts use.
    pub name: String,
    /// What to GET (redirects are not followed: a 3xx is the answer).
    pub url: String,
    /// The status that means healthy.
    #[serde(default = "default_status")]
    pub expected_status: u16,
    /// Seconds to wait for the answer's status line.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
}

fn default_status() -> u16 {
    200
}

fn default_timeout() -> f64 {
    5.0
}

/// One target's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetResult {
    /// Its name.
    pub name: String,
    /// Whether it answered the expected status in time.
    pub ok: bool,
    /// The status it answered, if it answered.
    pub status: Option<u16>,
    /// Time to the answer (or to the failure).
    pub latency_ms: u64,
    /// What was wrong.
    pub error: Option<String>,
}

/// What `check_health` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// Per target, in the order given.
    pub targets: Vec<TargetResult>,
    /// Targets that are fine.
    pub healthy: usize,
    /// Targets that are not.
    pub failing: usize,
    /// The `send_alert` task sent for the failing targets.
    pub alert_task_id: Option<Uuid>,
}

/// A target checked for sense, with its URL parsed.
struct Probe {
    index: usize,
    target: Target,
    url: reqwest::Url,
    timeout: Duration,
}

fn validate(targets: Vec<Target>) -> Result<Vec<Probe>, TaskError> {
    let invalid = |message: String| TaskError::permanent("InvalidArguments", message);
    if targets.is_empty() {
        return Err(invalid("`targets` is empty: give at least one {\"name\": ..., \"url\": ...}".to_owned()));
    }
    let mut names = BTreeSet::new();
    targets
        .into_iter()
        .enumerate()
        .map(|(index, target)| {
            let at = format!("targets[{index}]");
            if target.name.trim().is_empty() {
                return Err(invalid(format!("{at}: `name` is empty; alerts name the failing targets")));
            }
            if !names.insert(target.name.clone()) {
                return Err(invalid(format!("{at}: the name `{}` is used twice; names must be unique", target.name)));
            }
            // The reason never quotes the URL: it may carry credentials.
            let url = reqwest::Url::parse(&target.url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .ok_or_else(|| invalid(format!("{at} (`{}`): `url` is not an http(s) URL", target.name)))?;
            if !(100..=599).contains(&target.expected_status) {
                return Err(invalid(format!(
                    "{at} (`{}`): `expected_status` {} is not an HTTP status (100-599)",
                    target.name, target.expected_status
                )));
            }
            if !(target.timeout.is_finite() && target.timeout > 0.0 && target.timeout <= MAX_TIMEOUT_SECS) {
                return Err(invalid(format!(
                    "{at} (`{}`): `timeout` {} is not a number of seconds above 0 and at most {MAX_TIMEOUT_SECS}",
                    target.name, target.timeout
                )));
            }
            let timeout = Duration::from_secs_f64(target.timeout);
            Ok(Probe { index, target, url, timeout })
        })
        .collect()
}

pub(crate) async fn check_health(ctx: TaskContext, args: CheckHealth) -> Result<HealthReport, TaskError> {
    let mut probes = validate(args.targets)?;
    for probe in &mut probes {
        probe.timeout = within_time_left(probe.timeout, ctx.remaining(), ALERT_RESERVE);
    }
    let total = probes.len();
    let mut outcomes: Vec<(usize, TargetResult, String)> = Vec::with_capacity(total);
    let mut stream = futures::stream::iter(probes).map(probe).buffer_unordered(CONCURRENCY);
    while let Some(outcome) = stream.next().await {
        outcomes.push(outcome);
        let done = outcomes.len();
        let failing = outcomes.iter().filter(|(_, r, _)| !r.ok).count();
        ctx.progress((done * 100 / total) as u8, format!("checked {done}/{total} targets, {failing} failing")).await;
    }
    outcomes.sort_by_key(|(index, _, _)| *index);

    let failed: Vec<(&TargetResult, &str)> =
        outcomes.iter().filter(|(_, r, _)| !r.ok).map(|(_, r, url)| (r, url.as_str())).collect();
    let alert_task_id = if failed.is_empty() { None } else { Some(raise(&ctx, &failed, total).await?) };
    let failing = failed.len();
    tracing::info!(targets = total, failing, "health check done");
    Ok(HealthReport {
        targets: outcomes.into_iter().map(|(_, r, _)| r).collect(),
        healthy: total - failing,
        failing,
        alert_task_id,
    })
}

async fn probe(probe: Probe) -> (usize, TargetResult, String) {
    let Probe { index, target, url, timeout } = probe;
    let shown = shown_url(&url);
    let started = Instant::now();
    let answer = http_client().get(url).timeout(timeout).send().await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (status, error) = match answer {
        // The status line is all a probe needs; dropping the response closes the stream.
        Ok(response) => {
            let status = response.status().as_u16();
            let error = (status != target.expected_status)
                .then(|| format!("expected status {}, got {status}", target.expected_status));
            (Some(status), error)
        }
        Err(e) if e.is_timeout() => (None, Some(format!("no answer within {}", seconds_text(timeout)))),
        Err(e) => (None, Some(describe_transport(&e))),
    };
    let result = TargetResult { name: target.name, ok: error.is_none(), status, latency_ms, error };
    (index, result, shown)
}

/// A URL as an alert may show it: no user, password, query or fragment.
pub fn shown_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    // Both only fail for URLs that cannot have credentials, which then have none to strip.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// Sends the alert for the failing targets as a child task; returns its id.
async fn raise(ctx: &TaskContext, failed: &[(&TargetResult, &str)], total: usize) -> Result<Uuid, TaskError> {
    let level = if failed.len() == total { Level::Critical } else { Level::Error };
    let title = format!("Health check: {} of {total} targets failing", failed.len());
    let text = failed
        .iter()
        .map(|(r, url)| format!("- {} ({url}): {}", r.name, r.error.as_deref().unwrap_or("failed")))
        .collect::<Vec<_>>()
        .join("\n");
    let key = dedup_key("health", failed.iter().map(|(r, _)| r.name.as_str()));
    let kwargs = alert_kwargs(level, &title, &text, &key);
    ctx.send(SEND_ALERT, Vec::new(), kwargs).await
}

/// The keyword arguments of a `send_alert` call.
pub(crate) fn alert_kwargs(level: Level, title: &str, text: &str, dedup_key: &str) -> Map<String, Value> {
    let kwargs = json!({ "level": level, "title": title, "text": text, "dedup_key": dedup_key });
    kwargs.as_object().cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, url: &str) -> Target {
        Target { name: name.to_owned(), url: url.to_owned(), expected_status: 200, timeout: 5.0 }
    }

    #[test]
    fn shown_urls_lose_credentials_and_query() {
        let url = reqwest::Url::parse("https://admin:s3cret@api.example.com:8443/health?token=abc#top").expect("url");
        assert_eq!(shown_url(&url), "https://api.example.com:8443/health");
    }

    #[test]
    fn targets_are_checked_with_clear_messages() {
        let message = |targets: Vec<Target>| validate(targets).err().expect("invalid").info().message.clone();
        assert!(message(vec![]).contains("`targets` is empty"));
        let twice = message(vec![target("api", "http://a/"), target("api", "http://b/")]);
        assert!(twice.contains("targets[1]") && twice.contains("`api` is used twice"), "{twice}");
        let bad_url = message(vec![target("db", "ftp://user:SECRET@db/")]);
        assert!(bad_url.contains("targets[0] (`db`)") && !bad_url.contains("SECRET"), "{bad_url}");
        let status = message(vec![Target { expected_status: 42, ..target("api", "http://a/") }]);
        assert!(status.contains("`expected_status` 42"), "{status}");
        let timeout = message(vec![Target { timeout: 0.0, ..target("api", "http://a/") }]);
        assert!(timeout.contains("`timeout` 0"), "{timeout}");
        assert_eq!(
            validate(vec![target("api", "http://a/"), target("db", "https://b/")]).map(|p| p.len()).ok(),
            Some(2)
        );
    }
}
