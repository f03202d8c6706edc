//! Posting an alert to a chat webhook: the body per format, the answer's meaning (including the
//! error codes Feishu and DingTalk put in a 200), `Retry-After`, and keeping the URL's token out
//! of every message.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use taskbeat::TaskError;

use crate::settings::{WebhookFormat, WebhookUrl};

/// The longest wait a `Retry-After` is honoured for: a header asking for days would park the alert
/// past any use, so it is retried after this at the latest.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long to wait when Feishu or DingTalk report throttling in a 200 body (both limit bots to
/// a number of messages per minute and send no `Retry-After`).
const BODY_THROTTLE_WAIT: Duration = Duration::from_secs(60);

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// For the record.
    Info,
    /// Needs a look soon.
    Warning,
    /// Something is broken.
    Error,
    /// Everything is broken.
    Critical,
}

impl Level {
    /// Every level, least serious first.
    pub const ALL: [Level; 4] = [Level::Info, Level::Warning, Level::Error, Level::Critical];

    /// The level's name in arguments and JSON bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::Critical => "critical",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Level::ALL
            .into_iter()
            .find(|l| l.as_str() == wanted)
            .ok_or_else(|| format!("unknown level {s:?}: expected one of {}", Level::ALL.map(Level::as_str).join(", ")))
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// How serious.
    pub level: Level,
    /// One line.
    pub title: String,
    /// The details.
    pub text: String,
    /// Alerts with the same key are delivered once per window.
    pub dedup_key: Option<String>,
}

impl Alert {
    /// The message as a chat shows it: a header line, then the details.
    pub fn chat_text(&self) -> String {
        let header = format!("[{}] {}", self.level.as_str().to_ascii_uppercase(), self.title);
        if self.text.trim().is_empty() { header } else { format!("{header}\n{}", self.text) }
    }
}

/// The webhook's body for `alert` in `format`.
pub fn payload(format: WebhookFormat, alert: &Alert) -> Value {
    match format {
        WebhookFormat::Json => json!({
            "level": alert.level,
            "title": alert.title,
            "text": alert.text,
            "dedup_key": alert.dedup_key,
        }),
        WebhookFormat::Slack => json!({ "text": alert.chat_text() }),
        WebhookFormat::Feishu => json!({ "msg_type": "text", "content": { "text": alert.chat_text() } }),
        WebhookFormat::Dingtalk => json!({ "msgtype": "text", "text": { "content": alert.chat_text() } }),
    }
}

/// Why an alert was not delivered. No variant carries the webhook's URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// 429, 5xx, a timeout, a connection failure, or throttling reported in the body: worth
    /// retrying, after `retry_after` when the webhook said how long.
    #[error("the webhook is unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
        /// The wait the webhook asked for.
        retry_after: Option<Duration>,
        /// Whether the webhook said to slow down (429 or a throttling code).
        throttled: bool,
    },
    /// Another answer: the webhook refused this alert, and sending it again will not help.
    #[error("the webhook refused the alert ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The webhook's message.
        message: String,
    },
}

impl From<WebhookError> for TaskError {
    fn from(e: WebhookError) -> Self {
        match &e {
            WebhookError::Unavailable { retry_after, throttled, .. } => {
                let kind = if *throttled { "WebhookThrottled" } else { "WebhookUnavailable" };
                match retry_after {
                    Some(after) => TaskError::retry_after(kind, e.to_string(), *after),
                    None => TaskError::retryable(kind, e.to_string()),
                }
            }
            WebhookError::Rejected { .. } => TaskError::permanent("WebhookRejected", e.to_string()),
        }
    }
}

/// A delivered alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The webhook's HTTP status.
    pub status: u16,
}

/// Posts `alert` to `url` in `format`, giving up after `timeout`.
pub async fn post(
    http: &reqwest::Client,
    url: &WebhookUrl,
    format: WebhookFormat,
    alert: &Alert,
    timeout: Duration,
) -> Result<Delivered, WebhookError> {
    let body = payload(format, alert);
    let response = http.post(url.url().clone()).json(&body).timeout(timeout).send().await.map_err(|e| {
        WebhookError::Unavailable { reason: transport(&e, timeout), retry_after: None, throttled: false }
    })?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, Utc::now()));
    // A body we cannot read is only a problem when we need its message.
    let text = response.text().await.unwrap_or_default();
    let code = status.as_u16();
    if code == 429 || status.is_server_error() {
        let wait = retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default();
        return Err(WebhookError::Unavailable {
            reason: format!("it answered {status}{wait}"),
            retry_after,
            throttled: code == 429,
        });
    }
    if status.is_redirection() {
        return Err(WebhookError::Rejected {
            status: code,
            message: format!("redirects are not followed; set {} to the final URL", crate::ENV_WEBHOOK_URL),
        });
    }
    if !status.is_success() {
        return Err(WebhookError::Rejected { status: code, message: redact(&message_of(&text), url.url()) });
    }
    check_body(format, code, &text, url.url())?;
    Ok(Delivered { status: code })
}

/// Feishu and DingTalk answer 200 and put their errors in the body.
fn check_body(format: WebhookFormat, status: u16, text: &str, url: &reqwest::Url) -> Result<(), WebhookError> {
    let Ok(body) = serde_json::from_str::<Value>(text) else { return Ok(()) };
    let (code, message, throttle_codes): (Option<i64>, Option<&str>, &[i64]) = match format {
        // Feishu: {"code": 0, "msg": "success"}; older bots {"StatusCode": 0, "StatusMessage": ...}.
        // 11232: sending too frequently.
        WebhookFormat::Feishu => (
            body.get("code").or_else(|| body.get("StatusCode")).and_then(Value::as_i64),
            body.get("msg").or_else(|| body.get("StatusMessage")).and_then(Value::as_str),
            &[11232],
        ),
        // DingTalk: {"errcode": 0, "errmsg": "ok"}; 130101: over 20 messages a minute.
        WebhookFormat::Dingtalk => {
            (body.get("errcode").and_then(Value::as_i64), body.get("errmsg").and_then(Value::as_str), &[130101])
        }
        WebhookFormat::Json | WebhookFormat::Slack => return Ok(()),
    };
    match code {
        None | Some(0) => Ok(()),
        Some(code) => {
            let message = redact(&format!("error code {code}: {}", message.unwrap_or("no message")), url);
            if throttle_codes.contains(&code) {
                Err(WebhookError::Unavailable {
                    reason: format!("it is throttling ({message})"),
                    retry_after: Some(BODY_THROTTLE_WAIT),
                    throttled: true,
                })
            } else {
                Err(WebhookError::Rejected { status, message })
            }
        }
    }
}

/// The webhook's own words from an error body: a JSON `error`/`message`/`msg`/`errmsg`, or the
/// start of the text.
fn message_of(text: &str) -> String {
    let from_json = serde_json::from_str::<Value>(text).ok().and_then(|v| {
        ["error", "message", "msg", "errmsg"].iter().find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_owned))
    });
    let message = from_json.unwrap_or_else(|| text.trim().chars().take(200).collect());
    if message.is_empty() { "no message".to_owned() } else { message }
}

fn transport(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}", crate::seconds_text(timeout));
    }
    crate::describe_transport(e)
}

/// Parses `Retry-After`: delay seconds or an HTTP date (IMF-fixdate, RFC 850 or asctime). A date
/// in the past is no wait; a wait over [`MAX_RETRY_AFTER`] is cut to it.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(value, "%A, %d-%b-%y %H:%M:%S GMT").ok().map(|t| t.and_utc()))
        .or_else(|| NaiveDateTime::parse_from_str(value, "%a %b %e %H:%M:%S %Y").ok().map(|t| t.and_utc()))?;
    Some((at - now).to_std().unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

/// `text` with the webhook's URL and anything in it that looks like a token (a long path segment,
/// a query value, a password) replaced, in case the webhook echoes them in an error.
pub fn redact(text: &str, url: &reqwest::Url) -> String {
    const MARK: &str = "[redacted]";
    let mut secrets: Vec<String> = vec![url.as_str().to_owned()];
    secrets.extend(url.path_segments().into_iter().flatten().filter(|s| s.len() >= 12).map(str::to_owned));
    secrets.extend(url.query_pairs().map(|(_, v)| v.into_owned()).filter(|v| v.len() >= 6));
    secrets.extend(url.password().map(str::to_owned));
    // Longest first, so a token inside the full URL does not leave the URL's remainder behind.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.into_iter().fold(text.to_owned(), |acc, secret| acc.replace(&secret, MARK))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn alert() -> Alert {
        Alert {
            level: Level::Error,
            title: "db down".to_owned(),
            text: "- db: timed out".to_owned(),
            dedup_key: Some("health:db".to_owned()),
        }
    }

    #[test]
    fn bodies_follow_each_format() {
        let a = alert();
        assert_eq!(payload(WebhookFormat::Slack, &a), json!({ "text": "[ERROR] db down\n- db: timed out" }));
        assert_eq!(
            payload(WebhookFormat::Feishu, &a),
            json!({ "msg_type": "text", "content": { "text": "[ERROR] db down\n- db: timed out" } })
        );
        assert_eq!(
            payload(WebhookFormat::Dingtalk, &a),
            json!({ "msgtype": "text", "text": { "content": "[ERROR] db down\n- db: timed out" } })
        );
        assert_eq!(
            payload(WebhookFormat::Json, &a),
            json!({ "level": "error", "title": "db down", "text": "- db: timed out", "dedup_key": "health:db" })
        );
        let bare = Alert { text: String::new(), ..a };
        assert_eq!(bare.chat_text(), "[ERROR] db down");
    }

    #[test]
    fn levels_parse_case_insensitively() {
        assert_eq!("Critical".parse::<Level>(), Ok(Level::Critical));
        let error = "fatal".parse::<Level>().expect_err("unknown");
        assert!(error.contains("fatal") && error.contains("info, warning, error, critical"), "{error}");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).single().expect("valid time");
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Thu, 03 Dec 2026 10:00:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Thursday, 03-Dec-26 10:01:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Thu Dec  3 10:00:05 2026", now), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("Thu, 03 Dec 2026 09:00:00 GMT", now), Some(Duration::ZERO), "in the past");
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn redaction_removes_tokens_in_path_query_and_password() {
        let url = reqwest::Url::parse(
            "https://bot:hunter2hunter2@hooks.example.com/services/T000/B000/XXXXSECRETXXXX?access_token=qs-SECRET",
        )
        .expect("valid URL");
        let echoed = format!("bad token XXXXSECRETXXXX at {url}, access_token=qs-SECRET, pw hunter2hunter2");
        let clean = redact(&echoed, &url);
        assert!(!clean.contains("SECRET") && !clean.contains("hunter2"), "{clean}");
        assert!(clean.contains("[redacted]"), "{clean}");
        assert_eq!(redact("channel_not_found", &url), "channel_not_found", "short words are kept");
    }

    #[test]
    fn errors_map_to_retry_intent() {
        let throttled = WebhookError::Unavailable {
            reason: "it answered 429".to_owned(),
            retry_after: Some(Duration::from_secs(2)),
            throttled: true,
        };
        assert!(matches!(TaskError::from(throttled), TaskError::RetryAfter(ref info, d)
            if info.kind == "WebhookThrottled" && d == Duration::from_secs(2)));
        let down =
            WebhookError::Unavailable { reason: "it answered 500".to_owned(), retry_after: None, throttled: false };
        assert!(matches!(TaskError::from(down), TaskError::Retryable(ref info) if info.kind == "WebhookUnavailable"));
        let refused = WebhookError::Rejected { status: 400, message: "invalid_payload".to_owned() };
        let error = TaskError::from(refused);
        assert!(!error.is_retryable());
        assert_eq!(error.info().message, "the webhook refused the alert (400): invalid_payload");
    }

    #[test]
    fn body_codes_of_feishu_and_dingtalk_are_checked() {
        let url = reqwest::Url::parse("https://open.feishu.cn/open-apis/bot/v2/hook/0123456789abcdef").expect("url");
        assert_eq!(check_body(WebhookFormat::Feishu, 200, r#"{"code":0,"msg":"success"}"#, &url), Ok(()));
        assert_eq!(check_body(WebhookFormat::Feishu, 200, r#"{"StatusCode":0}"#, &url), Ok(()));
        assert_eq!(
            check_body(WebhookFormat::Feishu, 200, r#"{"code":19021,"msg":"sign match fail"}"#, &url),
            Err(WebhookError::Rejected { status: 200, message: "error code 19021: sign match fail".to_owned() })
        );
        assert!(matches!(
            check_body(WebhookFormat::Dingtalk, 200, r#"{"errcode":130101,"errmsg":"send too fast"}"#, &url),
            Err(WebhookError::Unavailable { throttled: true, retry_after: Some(_), .. })
        ));
        assert_eq!(check_body(WebhookFormat::Slack, 200, "ok", &url), Ok(()));
        assert_eq!(check_body(WebhookFormat::Json, 200, r#"{"code":5}"#, &url), Ok(()), "plain JSON has no codes");
    }
}
