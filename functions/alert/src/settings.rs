//! Settings of alert delivery, read from the environment when `send_alert` runs (or given by a
//! test or tool through [`crate::registry_with`]).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use taskbeat::TaskError;

/// The webhook alerts are posted to (it usually embeds a token: never logged).
pub const ENV_WEBHOOK_URL: &str = "ALERT_WEBHOOK_URL";
/// The body format: `json` (default), `slack`, `feishu` or `dingtalk`.
pub const ENV_WEBHOOK_FORMAT: &str = "ALERT_WEBHOOK_FORMAT";
/// Seconds within which one dedup key is delivered once (default 600; 0 turns deduplication off).
pub const ENV_DEDUP_WINDOW: &str = "ALERT_DEDUP_WINDOW_SECS";
/// Seconds one webhook request may take (default 10).
pub const ENV_WEBHOOK_TIMEOUT: &str = "ALERT_WEBHOOK_TIMEOUT_SECS";

/// Default of [`ENV_DEDUP_WINDOW`].
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(600);
/// Default of [`ENV_WEBHOOK_TIMEOUT`].
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// A setting that is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Not set (or empty).
    #[error("{name} is not set: {hint}")]
    Missing {
        /// The variable.
        name: &'static str,
        /// What to set it to.
        hint: &'static str,
    },
    /// Set to something unusable.
    #[error("{name} is not valid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong and what is expected (never the value of a secret).
        reason: String,
    },
}

impl From<SettingError> for TaskError {
    fn from(e: SettingError) -> Self {
        let kind = match e {
            SettingError::Missing { .. } => "MissingSetting",
            SettingError::Invalid { .. } => "InvalidSetting",
        };
        TaskError::permanent(kind, e.to_string())
    }
}

/// How an alert is laid out in the webhook's body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The alert's fields as plain JSON: `{"level", "title", "text", "dedup_key"}`.
    #[default]
    Json,
    /// Slack incoming webhook: `{"text": ...}`.
    Slack,
    /// Feishu / Lark custom bot: `{"msg_type": "text", "content": {"text": ...}}`.
    Feishu,
    /// DingTalk custom robot: `{"msgtype": "text", "text": {"content": ...}}`.
    Dingtalk,
}

impl WebhookFormat {
    /// Every format, as spelled in [`ENV_WEBHOOK_FORMAT`].
    pub const ALL: [WebhookFormat; 4] =
        [WebhookFormat::Json, WebhookFormat::Slack, WebhookFormat::Feishu, WebhookFormat::Dingtalk];

    /// The name used in the setting.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Json => "json",
            WebhookFormat::Slack => "slack",
            WebhookFormat::Feishu => "feishu",
            WebhookFormat::Dingtalk => "dingtalk",
        }
    }
}

impl fmt::Display for WebhookFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WebhookFormat {
    type Err = SettingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        WebhookFormat::ALL.into_iter().find(|f| f.as_str() == wanted).ok_or_else(|| SettingError::Invalid {
            name: ENV_WEBHOOK_FORMAT,
            reason: format!(
                "unknown format {s:?}: expected one of {}",
                WebhookFormat::ALL.map(WebhookFormat::as_str).join(", ")
            ),
        })
    }
}

/// The webhook's URL. A secret: its `Debug` shows no part of it, and no error quotes it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(reqwest::Url);

impl WebhookUrl {
    /// Parses an http(s) URL.
    pub fn parse(text: &str) -> Result<Self, SettingError> {
        // The reasons never quote the text: it carries the webhook's token.
        let url = reqwest::Url::parse(text.trim()).map_err(|e| SettingError::Invalid {
            name: ENV_WEBHOOK_URL,
            reason: format!("not a URL ({e}); expected the webhook's https:// URL"),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(SettingError::Invalid {
                name: ENV_WEBHOOK_URL,
                reason: "not an http(s) URL with a host; expected the webhook's https:// URL".to_owned(),
            });
        }
        Ok(WebhookUrl(url))
    }

    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.0
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookUrl([redacted])")
    }
}

/// Everything `send_alert` needs to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    /// Where alerts go; `None` fails `send_alert` with a message naming [`ENV_WEBHOOK_URL`].
    pub webhook_url: Option<WebhookUrl>,
    /// The body format.
    pub format: WebhookFormat,
    /// One dedup key is delivered once within this window (zero: no deduplication).
    pub dedup_window: Duration,
    /// The longest one webhook request may take.
    pub webhook_timeout: Duration,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            webhook_url: None,
            format: WebhookFormat::default(),
            dedup_window: DEFAULT_DEDUP_WINDOW,
            webhook_timeout: DEFAULT_WEBHOOK_TIMEOUT,
        }
    }
}

impl AlertSettings {
    /// Defaults, posting to `webhook_url`.
    pub fn new(webhook_url: &str) -> Result<Self, SettingError> {
        Ok(AlertSettings { webhook_url: Some(WebhookUrl::parse(webhook_url)?), ..AlertSettings::default() })
    }

    /// The same, in another format.
    pub fn with_format(mut self, format: WebhookFormat) -> Self {
        self.format = format;
        self
    }

    /// The same, with another dedup window.
    pub fn with_dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }

    /// The same, with another request timeout.
    pub fn with_webhook_timeout(mut self, timeout: Duration) -> Self {
        self.webhook_timeout = timeout;
        self
    }

    /// Reads the settings through `var` (the process environment in a function).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let webhook_url = set(ENV_WEBHOOK_URL).map(|v| WebhookUrl::parse(&v)).transpose()?;
        let format = set(ENV_WEBHOOK_FORMAT).map(|v| v.parse()).transpose()?.unwrap_or_default();
        let dedup_window = seconds(ENV_DEDUP_WINDOW, set(ENV_DEDUP_WINDOW))?.unwrap_or(DEFAULT_DEDUP_WINDOW);
        let webhook_timeout = match seconds(ENV_WEBHOOK_TIMEOUT, set(ENV_WEBHOOK_TIMEOUT))? {
            Some(t) if t.is_zero() => {
                return Err(SettingError::Invalid {
                    name: ENV_WEBHOOK_TIMEOUT,
                    reason: "0 seconds would fail every request; give a positive whole number of seconds".to_owned(),
                });
            }
            Some(t) => t,
            None => DEFAULT_WEBHOOK_TIMEOUT,
        };
        Ok(AlertSettings { webhook_url, format, dedup_window, webhook_timeout })
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, SettingError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The webhook, or the error naming the variable to set.
    pub fn webhook_url(&self) -> Result<&WebhookUrl, SettingError> {
        self.webhook_url.as_ref().ok_or(SettingError::Missing {
            name: ENV_WEBHOOK_URL,
            hint: "set it to the webhook's URL (Slack, Feishu, DingTalk or any JSON receiver) to deliver alerts",
        })
    }
}

fn seconds(name: &'static str, value: Option<String>) -> Result<Option<Duration>, SettingError> {
    value
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| SettingError::Invalid { name, reason: format!("{v:?} is not a whole number of seconds") })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults_apply_when_only_the_url_is_set() {
        let settings = AlertSettings::from_lookup(lookup(&[(ENV_WEBHOOK_URL, "https://hooks.example.com/T/B/x")]))
            .expect("valid settings");
        assert_eq!(settings.format, WebhookFormat::Json);
        assert_eq!(settings.dedup_window, DEFAULT_DEDUP_WINDOW);
        assert_eq!(settings.webhook_timeout, DEFAULT_WEBHOOK_TIMEOUT);
        assert!(settings.webhook_url().is_ok());
    }

    #[test]
    fn every_setting_is_read() {
        let settings = AlertSettings::from_lookup(lookup(&[
            (ENV_WEBHOOK_URL, "https://oapi.dingtalk.com/robot/send?access_token=abc"),
            (ENV_WEBHOOK_FORMAT, " DingTalk "),
            (ENV_DEDUP_WINDOW, "0"),
            (ENV_WEBHOOK_TIMEOUT, "3"),
        ]))
        .expect("valid settings");
        assert_eq!(settings.format, WebhookFormat::Dingtalk);
        assert_eq!(settings.dedup_window, Duration::ZERO);
        assert_eq!(settings.webhook_timeout, Duration::from_secs(3));
    }

    #[test]
    fn a_missing_url_is_named_when_needed() {
        let settings = AlertSettings::from_lookup(lookup(&[(ENV_WEBHOOK_URL, "  ")])).expect("nothing is wrong yet");
        let error = settings.webhook_url().expect_err("no URL");
        assert!(error.to_string().starts_with("ALERT_WEBHOOK_URL is not set"), "{error}");
        assert_eq!(TaskError::from(error).info().kind, "MissingSetting");
    }

    #[test]
    fn bad_values_are_named_and_explained() {
        let format = AlertSettings::from_lookup(lookup(&[(ENV_WEBHOOK_FORMAT, "teams")])).expect_err("bad format");
        assert!(format.to_string().contains("ALERT_WEBHOOK_FORMAT") && format.to_string().contains("slack"));
        let window = AlertSettings::from_lookup(lookup(&[(ENV_DEDUP_WINDOW, "10m")])).expect_err("bad window");
        assert!(window.to_string().contains("ALERT_DEDUP_WINDOW_SECS") && window.to_string().contains("\"10m\""));
        let timeout = AlertSettings::from_lookup(lookup(&[(ENV_WEBHOOK_TIMEOUT, "0")])).expect_err("zero timeout");
        assert!(timeout.to_string().contains("ALERT_WEBHOOK_TIMEOUT_SECS"));
    }

    #[test]
    fn a_bad_url_is_refused_without_quoting_it() {
        for bad in ["ftp://files.example.com/SECRET-TOKEN", "not a url SECRET-TOKEN", "mailto:SECRET-TOKEN@x"] {
            let error = AlertSettings::new(bad).expect_err(bad);
            assert!(error.to_string().contains("ALERT_WEBHOOK_URL"), "{error}");
            assert!(!error.to_string().contains("SECRET-TOKEN"), "{error}");
        }
    }

    #[test]
    fn debug_output_hides_the_url() {
        let settings = AlertSettings::new("https://hooks.example.com/services/SECRET-TOKEN").expect("valid");
        let shown = format!("{settings:?}");
        assert!(!shown.contains("SECRET-TOKEN") && !shown.contains("hooks.example.com"), "{shown}");
    }
}
