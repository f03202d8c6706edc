//! Alert tasks (`app.schedules.alert`), on queue `alerts`: ported from the seed's `alert.py`.
//!
//! - `check_health(targets)` probes HTTP targets concurrently and, when any fails, sends
//!   `send_alert` as a child task.
//! - `check_queues(max_backlog)` reads every queue and dead-letter queue of the manifest and
//!   alerts on dead letters and backlogs over the limit, likewise.
//! - `send_alert(level, title, text, dedup_key)` posts to the webhook at `ALERT_WEBHOOK_URL` in
//!   the format of `ALERT_WEBHOOK_FORMAT`, once per dedup key within `ALERT_DEDUP_WINDOW_SECS`.
//!
//! The webhook's URL usually embeds a token: it never reaches a log, an error or a record.
#![warn(missing_docs)]

mod health;
mod queues;
mod send;
mod settings;
mod webhook;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use taskbeat::{Registry, TaskError};

pub use health::{CheckHealth, HealthReport, Target, TargetResult, shown_url};
pub use queues::{CheckQueues, DEFAULT_MAX_BACKLOG, QueueAlert, QueueReport, QueuesReport};
pub use send::{DUPLICATE, MAX_DEDUP_KEY_BYTES, SendAlert, SendOutcome};
pub use settings::{
    AlertSettings, DEFAULT_DEDUP_WINDOW, DEFAULT_WEBHOOK_TIMEOUT, ENV_DEDUP_WINDOW, ENV_WEBHOOK_FORMAT,
    ENV_WEBHOOK_TIMEOUT, ENV_WEBHOOK_URL, SettingError, WebhookFormat, WebhookUrl,
};
pub use webhook::{Alert, Delivered, Level, MAX_RETRY_AFTER, WebhookError, parse_retry_after, payload, redact};

/// The task name of `check_health`.
pub const CHECK_HEALTH: &str = "app.schedules.alert.check_health";
/// The task name of `check_queues`.
pub const CHECK_QUEUES: &str = "app.schedules.alert.check_queues";
/// The task name of `send_alert`.
pub const SEND_ALERT: &str = "app.schedules.alert.send_alert";

/// The module's tasks, configured from the environment when `send_alert` runs.
pub fn registry() -> Registry {
    registry_from(Source::Env)
}

/// The module's tasks with fixed settings (tests, tools): the environment is not read.
pub fn registry_with(settings: AlertSettings) -> Registry {
    registry_from(Source::Fixed(settings))
}

fn registry_from(source: Source) -> Registry {
    let source = Arc::new(source);
    Registry::new("alert")
        .task(CHECK_HEALTH, &["targets"], health::check_health)
        .task(CHECK_QUEUES, &["max_backlog"], queues::check_queues)
        .task(SEND_ALERT, &["level", "title", "text", "dedup_key"], move |ctx, args| {
            send::send_alert(ctx, args, source.clone())
        })
}

/// Where `send_alert`'s settings come from.
#[derive(Debug)]
pub(crate) enum Source {
    Env,
    Fixed(AlertSettings),
}

impl Source {
    /// Read on every run, so a changed environment takes effect without a new registry.
    pub(crate) fn settings(&self) -> Result<AlertSettings, TaskError> {
        match self {
            Source::Env => AlertSettings::from_env().map_err(TaskError::from),
            Source::Fixed(settings) => Ok(settings.clone()),
        }
    }
}

/// The process's HTTP client (built once per cold start). Redirects are not followed: a probe
/// reports what the target answered, and a webhook's token is never sent to another host.
pub(crate) fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("taskbeat-alert/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default()
    })
}

/// What a transport failure was, without the URL (reqwest's own message quotes it, and it may
/// carry credentials): the kind, and the innermost cause, which is the operating system's words.
pub(crate) fn describe_transport(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() { "connection failed" } else { "request failed" };
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if std::ptr::addr_eq(cause, e as &dyn std::error::Error) { kind.to_owned() } else { format!("{kind} ({cause})") }
}

/// The shortest timeout a request gets, however little time is left.
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_millis(100);

/// `wanted`, cut so the request ends `reserve` before the run's time is up: a request cut short
/// is an error the task can still handle (alert, retry), where the runtime stopping the task is a
/// FAILURE that loses the alert.
pub(crate) fn within_time_left(wanted: Duration, remaining: Option<Duration>, reserve: Duration) -> Duration {
    match remaining {
        Some(left) => wanted.min(left.saturating_sub(reserve)).max(MIN_REQUEST_TIMEOUT),
        None => wanted,
    }
}

/// Seconds for a person: `5 s`, `0.3 s`.
pub(crate) fn seconds_text(d: Duration) -> String {
    format!("{} s", (d.as_secs_f64() * 10.0).round() / 10.0)
}

/// The longest readable dedup key; longer ones are hashed.
const MAX_READABLE_KEY: usize = 200;

/// A dedup key for a set of names: the same set gives the same key, whatever the order.
/// Readable (`health:api,db`) when short, else a stable hash of it.
pub(crate) fn dedup_key<'a>(prefix: &str, names: impl Iterator<Item = &'a str>) -> String {
    let set: std::collections::BTreeSet<&str> = names.collect();
    let joined = set.into_iter().collect::<Vec<_>>().join(",");
    if joined.len() <= MAX_READABLE_KEY {
        return format!("{prefix}:{joined}");
    }
    // FNV-1a: stable across builds and Rust versions, unlike std's hasher.
    let hash = joined.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{prefix}:{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_end_before_the_run_does() {
        let s = Duration::from_secs;
        assert_eq!(within_time_left(s(5), None, s(3)), s(5));
        assert_eq!(within_time_left(s(5), Some(s(60)), s(3)), s(5));
        assert_eq!(within_time_left(s(30), Some(s(10)), s(3)), s(7));
        assert_eq!(within_time_left(s(30), Some(s(1)), s(3)), MIN_REQUEST_TIMEOUT);
        assert_eq!(seconds_text(Duration::from_millis(300)), "0.3 s");
        assert_eq!(seconds_text(s(5)), "5 s");
        assert_eq!(seconds_text(Duration::from_millis(996)), "1 s");
    }

    #[test]
    fn dedup_keys_depend_on_the_set_only() {
        assert_eq!(dedup_key("health", ["db", "api", "db"].into_iter()), "health:api,db");
        assert_eq!(dedup_key("health", ["api", "db"].into_iter()), dedup_key("health", ["db", "api"].into_iter()));
        assert_ne!(dedup_key("health", ["api"].into_iter()), dedup_key("health", ["api", "db"].into_iter()));
        let many: Vec<String> = (0..100).map(|i| format!("target-{i}")).collect();
        let hashed = dedup_key("health", many.iter().map(String::as_str));
        assert!(hashed.len() < 30 && hashed.starts_with("health:"), "{hashed}");
        let fewer = dedup_key("health", many[1..].iter().map(String::as_str));
        assert_ne!(hashed, fewer);
    }

    #[test]
    fn the_registry_has_the_celery_names_and_parameters() {
        let registry = registry();
        assert_eq!(registry.module(), "alert");
        assert_eq!(registry.names().collect::<Vec<_>>(), vec![CHECK_HEALTH, CHECK_QUEUES, SEND_ALERT]);
        assert_eq!(
            registry.get(SEND_ALERT).map(|t| t.params().to_vec()),
            Some(vec!["level", "title", "text", "dedup_key"])
        );
    }
}
