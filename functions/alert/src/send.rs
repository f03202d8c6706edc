//! `send_alert`: delivery to the webhook, once per dedup key and window.
//!
//! Deduplication takes two conditional markers, in this order:
//!
//! 1. `alert-run:{task id}`: taken only by the first run of this task (within the window);
//! 2. `alert:{dedup key}`: taken only by the first task of the window.
//!
//! A run delivers when it took the window's marker, or when it is not the task's first run. A
//! task's later runs only happen after an earlier run of its own failed (a 5xx or 429 from the
//! webhook, a store outage, a crash): that earlier run is the one that took the window's marker,
//! or it never learned whether it had, so the retry delivers instead of finding its own marker
//! and skipping. A different task with the same key in the window finds both facts against it and
//! skips. Every failure between the steps errs towards one alert too many, never one too few.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use taskbeat::{TaskContext, TaskError};

use crate::settings::{AlertSettings, WebhookFormat};
use crate::webhook::{self, Alert, Level, WebhookError};
use crate::{Source, http_client, within_time_left};

/// Time kept after the webhook request to record the outcome.
const RECORD_RESERVE: Duration = Duration::from_secs(1);

/// The longest dedup key: it becomes a key in the state store (DynamoDB allows 2 KB).
pub const MAX_DEDUP_KEY_BYTES: usize = 512;

/// Arguments of `send_alert(level, title, text, dedup_key)`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendAlert {
    /// `info`, `warning`, `error` or `critical`.
    pub level: String,
    /// One line.
    pub title: String,
    /// The details (may be empty).
    #[serde(default)]
    pub text: String,
    /// Alerts with the same key are delivered once per window; none: always delivered.
    #[serde(default)]
    pub dedup_key: Option<String>,
}

impl SendAlert {
    fn into_alert(self) -> Result<Alert, TaskError> {
        let invalid = |message: String| TaskError::permanent("InvalidArguments", message);
        let level: Level = self.level.parse().map_err(|e| invalid(format!("argument `level`: {e}")))?;
        if self.title.trim().is_empty() {
            return Err(invalid("argument `title` is empty: give the alert a one-line title".to_owned()));
        }
        let dedup_key = self.dedup_key.map(|k| k.trim().to_owned()).filter(|k| !k.is_empty());
        if let Some(key) = dedup_key.as_ref().filter(|k| k.len() > MAX_DEDUP_KEY_BYTES) {
            return Err(invalid(format!(
                "argument `dedup_key` is {} bytes, over {MAX_DEDUP_KEY_BYTES}: use a short name for the condition",
                key.len()
            )));
        }
        Ok(Alert { level, title: self.title, text: self.text, dedup_key })
    }
}

/// What `send_alert` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendOutcome {
    /// Whether the webhook got it in this run.
    pub delivered: bool,
    /// Why it was not delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The webhook's HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The body format used.
    pub format: String,
    /// The dedup key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
}

/// The reason of a skipped duplicate.
pub const DUPLICATE: &str = "duplicate within window";

pub(crate) async fn send_alert(
    ctx: TaskContext,
    args: SendAlert,
    source: Arc<Source>,
) -> Result<SendOutcome, TaskError> {
    let alert = args.into_alert()?;
    let settings: AlertSettings = source.settings()?;
    let url = settings.webhook_url()?;
    let format = settings.format;
    if let Some(key) = &alert.dedup_key
        && !settings.dedup_window.is_zero()
        && !should_deliver(&ctx, key, settings.dedup_window).await?
    {
        tracing::info!(level = %alert.level, "alert not delivered: duplicate within the dedup window");
        return Ok(outcome(false, Some(DUPLICATE.to_owned()), None, format, alert.dedup_key));
    }
    let timeout = within_time_left(settings.webhook_timeout, ctx.remaining(), RECORD_RESERVE);
    match webhook::post(http_client(), url, format, &alert, timeout).await {
        Ok(delivered) => {
            tracing::info!(level = %alert.level, format = %format, status = delivered.status, "alert delivered");
            Ok(outcome(true, None, Some(delivered.status), format, alert.dedup_key))
        }
        Err(e) => {
            // The status only, not the message: it may quote the webhook's answer.
            let (status, retryable) = match &e {
                WebhookError::Rejected { status, .. } => (Some(*status), false),
                WebhookError::Unavailable { .. } => (None, true),
            };
            tracing::warn!(level = %alert.level, format = %format, status, retryable, "alert not delivered");
            Err(e.into())
        }
    }
}

fn outcome(
    delivered: bool,
    reason: Option<String>,
    status: Option<u16>,
    format: WebhookFormat,
    dedup_key: Option<String>,
) -> SendOutcome {
    SendOutcome { delivered, reason, status, format: format.as_str().to_owned(), dedup_key }
}

/// The decision described in the module's documentation.
async fn should_deliver(ctx: &TaskContext, key: &str, window: Duration) -> Result<bool, TaskError> {
    let store = &ctx.client()?.backend().store;
    let unavailable = |e: taskbeat::store::StoreError| {
        TaskError::retryable("StoreUnavailable", format!("could not check the alert's dedup marker: {e}"))
    };
    let first_run = store.acquire_marker(&format!("alert-run:{}", ctx.id()), window).await.map_err(unavailable)?;
    let first_in_window = store.acquire_marker(&format!("alert:{key}"), window).await.map_err(unavailable)?;
    Ok(first_in_window || !first_run)
}
