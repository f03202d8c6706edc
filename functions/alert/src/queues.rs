//! `check_queues`: reads the depth of every queue of the manifest and of its dead-letter queue,
//! and raises one alert for dead letters and backlogs over the limit.

use serde::{Deserialize, Serialize};
use taskbeat::TaskContext;
use taskbeat::TaskError;
use taskbeat::queue::{QueueDepth, QueueError};
use uuid::Uuid;

use crate::health::alert_kwargs;
use crate::webhook::Level;
use crate::{SEND_ALERT, dedup_key};

/// The default backlog limit.
pub const DEFAULT_MAX_BACKLOG: u64 = 1000;

/// Arguments of `check_queues(max_backlog)`.
#[derive(Debug, Deserialize)]
pub struct CheckQueues {
    /// A queue whose backlog (visible + delayed messages) is over this raises an alert.
    #[serde(default = "default_max_backlog")]
    pub max_backlog: u64,
}

fn default_max_backlog() -> u64 {
    DEFAULT_MAX_BACKLOG
}

/// What was found wrong with a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueAlert {
    /// Its dead-letter queue holds messages.
    DeadLetters,
    /// Its backlog is over the limit.
    Backlog,
    /// It (or its dead-letter queue) does not exist.
    Missing,
}

impl QueueAlert {
    fn as_str(self) -> &'static str {
        match self {
            QueueAlert::DeadLetters => "dead_letters",
            QueueAlert::Backlog => "backlog",
            QueueAlert::Missing => "missing",
        }
    }
}

/// One queue's numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    /// The manifest's queue name.
    pub queue: String,
    /// Ready to be received.
    pub visible: u64,
    /// Being worked on.
    pub in_flight: u64,
    /// Waiting out a delay (countdowns, retries).
    pub delayed: u64,
    /// `visible + delayed`: what is waiting to run.
    pub backlog: u64,
    /// Messages in its dead-letter queue (all conditions).
    pub dead_letters: u64,
    /// What this queue raised.
    pub alerts: Vec<QueueAlert>,
    /// Why a depth could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `check_queues` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuesReport {
    /// Per queue, by name.
    pub queues: Vec<QueueReport>,
    /// The limit used.
    pub max_backlog: u64,
    /// The `send_alert` task sent, when anything was wrong.
    pub alert_task_id: Option<Uuid>,
}

pub(crate) async fn check_queues(ctx: TaskContext, args: CheckQueues) -> Result<QueuesReport, TaskError> {
    let client = ctx.client()?;
    let pairs: Vec<_> = client.backend().queues.iter().map(|(name, pair)| (name.clone(), pair.clone())).collect();
    let total = pairs.len();
    let mut reports = Vec::with_capacity(total);
    for (done, (name, pair)) in pairs.into_iter().enumerate() {
        let (queue, dead) = futures::future::join(pair.queue.depth(), pair.dead_letters.depth()).await;
        reports.push(report(&name, queue, dead, args.max_backlog)?);
        ctx.progress(((done + 1) * 100 / total.max(1)) as u8, format!("checked {}/{total} queues", done + 1)).await;
    }

    let problems: Vec<&QueueReport> = reports.iter().filter(|r| !r.alerts.is_empty()).collect();
    let alert_task_id = if problems.is_empty() { None } else { Some(raise(&ctx, &problems, args.max_backlog).await?) };
    tracing::info!(queues = total, with_alerts = problems.len(), "queue check done");
    Ok(QueuesReport { queues: reports, max_backlog: args.max_backlog, alert_task_id })
}

fn report(
    name: &str,
    queue: Result<QueueDepth, QueueError>,
    dead: Result<QueueDepth, QueueError>,
    max_backlog: u64,
) -> Result<QueueReport, TaskError> {
    let mut report = QueueReport {
        queue: name.to_owned(),
        visible: 0,
        in_flight: 0,
        delayed: 0,
        backlog: 0,
        dead_letters: 0,
        alerts: Vec::new(),
        error: None,
    };
    let mut missing = Vec::new();
    match queue {
        Ok(depth) => {
            report.visible = depth.visible;
            report.in_flight = depth.in_flight;
            report.delayed = depth.delayed;
            report.backlog = depth.visible.saturating_add(depth.delayed);
            if report.backlog > max_backlog {
                report.alerts.push(QueueAlert::Backlog);
            }
        }
        Err(e @ QueueError::NoSuchQueue(_)) => missing.push(e.to_string()),
        // A throttle or an outage passes: read everything again on the retry.
        Err(e) => return Err(TaskError::retryable("QueueUnavailable", e.to_string())),
    }
    match dead {
        Ok(depth) => {
            report.dead_letters = depth.visible.saturating_add(depth.in_flight).saturating_add(depth.delayed);
            if report.dead_letters > 0 {
                report.alerts.push(QueueAlert::DeadLetters);
            }
        }
        Err(e @ QueueError::NoSuchQueue(_)) => missing.push(e.to_string()),
        Err(e) => return Err(TaskError::retryable("QueueUnavailable", e.to_string())),
    }
    if !missing.is_empty() {
        report.alerts.push(QueueAlert::Missing);
        report.error = Some(missing.join("; "));
    }
    report.alerts.sort();
    Ok(report)
}

/// Sends one alert for every queue with a problem, as a child task; returns its id.
async fn raise(ctx: &TaskContext, problems: &[&QueueReport], max_backlog: u64) -> Result<Uuid, TaskError> {
    let serious = problems.iter().any(|r| r.alerts.iter().any(|a| *a != QueueAlert::Backlog));
    let level = if serious { Level::Error } else { Level::Warning };
    let names: Vec<&str> = problems.iter().map(|r| r.queue.as_str()).collect();
    let title = format!("Queue check: {} need attention", names.join(", "));
    let mut lines = Vec::new();
    for r in problems {
        for alert in &r.alerts {
            lines.push(match alert {
                QueueAlert::DeadLetters => format!(
                    "- {}: {} message(s) in its dead-letter queue; inspect them and send them back once fixed",
                    r.queue, r.dead_letters
                ),
                QueueAlert::Backlog => format!(
                    "- {}: backlog {} (visible {} + delayed {}) over {max_backlog}; {} in flight",
                    r.queue, r.backlog, r.visible, r.delayed, r.in_flight
                ),
                QueueAlert::Missing => format!("- {}: {}", r.queue, r.error.as_deref().unwrap_or("does not exist")),
            });
        }
    }
    let tags: Vec<String> =
        problems.iter().flat_map(|r| r.alerts.iter().map(move |a| format!("{}:{}", r.queue, a.as_str()))).collect();
    let key = dedup_key("queues", tags.iter().map(String::as_str));
    ctx.send(SEND_ALERT, Vec::new(), alert_kwargs(level, &title, &lines.join("\n"), &key)).await
}
