//! `send_alert` against the webhook stand-in: formats, retries with `Retry-After`, refusals,
//! deduplication (including across a failed delivery's retry) and keeping the URL secret.

use std::time::Duration;

use serde_json::{Value, json};
use taskbeat::{TaskError, TaskState};
use taskbeat_alert::{AlertSettings, DUPLICATE, SEND_ALERT, WebhookFormat, registry_with};
use taskbeat_e2e::fake_webhook::{self, Reply};

use crate::rig::{Logs, Rig, envelope};

fn alert(key: Option<&str>) -> Value {
    json!({ "level": "error", "title": "db down", "text": "- db: timed out", "dedup_key": key })
}

fn rig_for(settings: AlertSettings) -> Rig {
    Rig::new(registry_with(settings))
}

#[tokio::test]
async fn each_format_posts_its_body() {
    let expected = [
        (WebhookFormat::Slack, json!({ "text": "[ERROR] db down\n- db: timed out" })),
        (
            WebhookFormat::Feishu,
            json!({ "msg_type": "text", "content": { "text": "[ERROR] db down\n- db: timed out" } }),
        ),
        (
            WebhookFormat::Dingtalk,
            json!({ "msgtype": "text", "text": { "content": "[ERROR] db down\n- db: timed out" } }),
        ),
        (
            WebhookFormat::Json,
            json!({ "level": "error", "title": "db down", "text": "- db: timed out", "dedup_key": "db" }),
        ),
    ];
    for (format, body) in expected {
        let hook = fake_webhook::spawn([]).await;
        let rig = rig_for(AlertSettings::new(&hook.url("/hook")).unwrap().with_format(format));
        let record = rig.run(&envelope(SEND_ALERT, alert(Some("db")))).await;
        assert_eq!(record.state, TaskState::Success, "{format}: {:?}", record.error);
        assert_eq!(
            record.result,
            Some(json!({ "delivered": true, "status": 200, "format": format.as_str(), "dedup_key": "db" }))
        );
        let received = hook.received();
        assert_eq!(received.len(), 1, "{format}");
        assert_eq!(received[0].body, body, "{format}");
        assert_eq!(received[0].content_type.as_deref(), Some("application/json"), "{format}");
    }
}

#[tokio::test]
async fn the_default_format_is_plain_json_and_positional_args_work() {
    let hook = fake_webhook::spawn([]).await;
    let rig = rig_for(AlertSettings::new(&hook.url("/hook")).unwrap());
    let call = taskbeat::Envelope::new(SEND_ALERT, vec![json!("INFO"), json!("deploy finished")], Default::default());
    let record = rig.run(&call).await;
    assert_eq!(record.state, TaskState::Success, "{:?}", record.error);
    assert_eq!(
        hook.received()[0].body,
        json!({ "level": "info", "title": "deploy finished", "text": "", "dedup_key": null })
    );
}

#[tokio::test]
async fn throttling_and_outages_are_retried_after_the_webhooks_retry_after() {
    let in_30s = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822().replace("+0000", "GMT");
    let hook = fake_webhook::spawn([
        Reply::json(429, r#"{"ok":false,"error":"rate_limited"}"#).header("Retry-After", "2"),
        Reply::text(429, "slow down").header("Retry-After", &in_30s),
        Reply::text(503, "maintenance").header("Retry-After", "1"),
        Reply::text(502, "bad gateway"),
    ])
    .await;
    let rig = rig_for(AlertSettings::new(&hook.url("/hook")).unwrap().with_format(WebhookFormat::Slack));

    let error = rig.call(SEND_ALERT, alert(None)).await.unwrap_err();
    assert!(
        matches!(&error, TaskError::RetryAfter(info, after) if info.kind == "WebhookThrottled" && *after == Duration::from_secs(2)),
        "{error:?}"
    );
    assert!(error.info().message.contains("429") && error.info().message.contains("retry after 2 s"), "{error}");
    let error = rig.call(SEND_ALERT, alert(None)).await.unwrap_err();
    let TaskError::RetryAfter(info, after) = &error else { panic!("an HTTP-date Retry-After is honoured: {error:?}") };
    assert_eq!(info.kind, "WebhookThrottled");
    assert!(*after > Duration::from_secs(25) && *after <= Duration::from_secs(30), "{after:?}");
    let error = rig.call(SEND_ALERT, alert(None)).await.unwrap_err();
    assert!(
        matches!(&error, TaskError::RetryAfter(info, after) if info.kind == "WebhookUnavailable" && *after == Duration::from_secs(1)),
        "{error:?}"
    );
    let error = rig.call(SEND_ALERT, alert(None)).await.unwrap_err();
    assert!(matches!(&error, TaskError::Retryable(info) if info.kind == "WebhookUnavailable"), "{error:?}");

    // Through the runtime: RETRY with the reason, then delivered on the next run.
    hook.script([Reply::text(429, "").header("Retry-After", "1")]);
    let call = envelope(SEND_ALERT, alert(Some("db")));
    let record = rig.run(&call).await;
    assert_eq!(record.state, TaskState::Retry);
    assert_eq!(record.retries, 1);
    assert_eq!(record.error.as_ref().unwrap().kind, "WebhookThrottled");
    let record = rig.run(&call).await;
    assert_eq!(record.state, TaskState::Success, "{:?}", record.error);
    assert_eq!(record.result.as_ref().unwrap()["delivered"], json!(true));
    assert_eq!(hook.received().len(), 6);
}

#[tokio::test]
async fn a_failed_delivery_is_retried_without_its_dedup_marker_swallowing_it() {
    let hook = fake_webhook::spawn([Reply::text(500, "internal error")]).await;
    let rig = rig_for(AlertSettings::new(&hook.url("/hook")).unwrap().with_format(WebhookFormat::Slack));
    let first = envelope(SEND_ALERT, alert(Some("db-down")));
    let record = rig.run(&first).await;
    assert_eq!(record.state, TaskState::Retry);
    assert_eq!(record.error.as_ref().unwrap().kind, "WebhookUnavailable");

    // Another task with the same key meanwhile: the first one holds the window, this one skips.
    let other = envelope(SEND_ALERT, alert(Some("db-down")));
    let record = rig.run(&other).await;
    assert_eq!(record.state, TaskState::Success);
    assert_eq!(
        record.result,
        Some(json!({ "delivered": false, "reason": DUPLICATE, "format": "slack", "dedup_key": "db-down" }))
    );

    // The first task's retry delivers: its own marker does not count as a duplicate.
    let record = rig.run(&first).await;
    assert_eq!(record.state, TaskState::Success, "{:?}", record.error);
    assert_eq!(record.result.as_ref().unwrap()["delivered"], json!(true));
    assert_eq!(hook.received().len(), 2, "the 500, then the retry's delivery; never the duplicate");
}

#[tokio::test]
async fn one_key_is_delivered_once_within_the_window_and_again_after_it() {
    let hook = fake_webhook::spawn([]).await;
    let window = Duration::from_secs(1);
    let rig = rig_for(AlertSettings::new(&hook.url("/hook")).unwrap().with_dedup_window(window));
    let delivered = |record: &taskbeat::record::TaskRecord| record.result.as_ref().unwrap()["delivered"].clone();

    assert_eq!(delivered(&rig.run(&envelope(SEND_ALERT, alert(Some("k1")))).await), json!(true));
    let duplicate = rig.run(&envelope(SEND_ALERT, alert(Some("k1")))).await;
    assert_eq!(duplicate.result.as_ref().unwrap()["reason"], json!(DUPLICATE));
    assert_eq!(delivered(&rig.run(&envelope(SEND_ALERT, alert(Some("k2")))).await), json!(true), "another key");
    assert_eq!(delivered(&rig.run(&envelope(SEND_ALERT, alert(None))).await), json!(true), "no key");
    assert_eq!(delivered(&rig.run(&envelope(SEND_ALERT, alert(None))).await), json!(true), "no key, again");
    assert_eq!(hook.received().len(), 4);

    tokio::time::sleep(window + Duration::from_millis(100)).await;
    assert_eq!(delivered(&rig.run(&envelope(SEND_ALERT, alert(Some("k1")))).await), json!(true), "window over");
    assert_eq!(hook.received().len(), 5);

    // A zero window turns deduplication off.
    let rig = rig_for(AlertSettings::new(&hook.url("/hook")).unwrap().with_dedup_window(Duration::ZERO));
    for _ in 0..2 {
        assert_eq!(delivered(&rig.run(&envelope(SEND_ALERT, alert(Some("k1")))).await), json!(true));
    }
    assert_eq!(hook.received().len(), 7);
}

#[tokio::test]
async fn a_refused_alert_fails_with_the_webhooks_message() {
    let hook = fake_webhook::spawn([
        Reply::json(400, r#"{"ok":false,"error":"invalid_payload"}"#),
        Reply::text(404, "no_service"),
        Reply::json(200, r#"{"code":19021,"msg":"sign match fail or timestamp is not within one hour"}"#),
        Reply::json(200, r#"{"errcode":130101,"errmsg":"send too fast, exceed 20 times per minute"}"#),
        Reply::text(301, "").header("Location", "https://elsewhere.example.com/"),
    ])
    .await;
    let url = hook.url("/hook");
    let cases = [
        (
            WebhookFormat::Slack,
            TaskState::Failure,
            "WebhookRejected",
            "the webhook refused the alert (400): invalid_payload",
        ),
        (
            WebhookFormat::Slack,
            TaskState::Failure,
            "WebhookRejected",
            "the webhook refused the alert (404): no_service",
        ),
        (WebhookFormat::Feishu, TaskState::Failure, "WebhookRejected", "(200): error code 19021: sign match fail"),
        (WebhookFormat::Dingtalk, TaskState::Retry, "WebhookThrottled", "error code 130101: send too fast"),
        (
            WebhookFormat::Json,
            TaskState::Failure,
            "WebhookRejected",
            "(301): redirects are not followed; set ALERT_WEBHOOK_URL",
        ),
    ];
    for (format, state, kind, message) in cases {
        let rig = rig_for(AlertSettings::new(&url).unwrap().with_format(format));
        let record = rig.run(&envelope(SEND_ALERT, alert(None))).await;
        assert_eq!(record.state, state, "{format}: {:?}", record.error);
        let error = record.error.unwrap();
        assert_eq!(error.kind, kind);
        assert!(error.message.contains(message), "{format}: {}", error.message);
    }
    assert_eq!(hook.received().len(), 5, "each tried once");
}

#[tokio::test]
async fn a_missing_webhook_url_fails_naming_the_variable() {
    // Settings as the environment gives them when nothing is set.
    let settings = AlertSettings::from_lookup(|_| None).unwrap();
    let rig = rig_for(settings);
    let record = rig.run(&envelope(SEND_ALERT, alert(Some("db")))).await;
    assert_eq!(record.state, TaskState::Failure);
    let error = record.error.unwrap();
    assert_eq!(error.kind, "MissingSetting");
    assert!(error.message.starts_with("ALERT_WEBHOOK_URL is not set"), "{}", error.message);
}

#[tokio::test]
async fn bad_arguments_are_explained() {
    let hook = fake_webhook::spawn([]).await;
    let rig = rig_for(AlertSettings::new(&hook.url("/hook")).unwrap());
    let cases = [
        (
            json!({ "level": "fatal", "title": "x" }),
            "unknown level \"fatal\": expected one of info, warning, error, critical",
        ),
        (json!({ "level": "info", "title": "  " }), "argument `title` is empty"),
        (json!({ "level": "info" }), "missing field `title`"),
        (json!({ "level": "info", "title": "x", "channel": "#ops" }), "unexpected keyword argument `channel`"),
        (json!({ "level": "info", "title": "x", "dedup_key": "k".repeat(600) }), "`dedup_key` is 600 bytes, over 512"),
    ];
    for (kwargs, message) in cases {
        let record = rig.run(&envelope(SEND_ALERT, kwargs.clone())).await;
        assert_eq!(record.state, TaskState::Failure, "{kwargs}");
        let error = record.error.unwrap();
        assert_eq!(error.kind, "InvalidArguments", "{kwargs}");
        assert!(error.message.contains(message), "{kwargs}: {}", error.message);
    }
    assert!(hook.received().is_empty());
}

#[tokio::test]
async fn the_webhook_url_never_reaches_records_or_logs() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let hook = fake_webhook::spawn([
        // A webhook that echoes its own URL and token back in errors.
        Reply::text(500, "upstream failed for /services/T0/B0/SECRETxTOKENx0123456789"),
        Reply::json(403, r#"{"error":"token SECRETxTOKENx0123456789 revoked; access_token=SECRETxQUERY"}"#),
    ])
    .await;
    let url = hook.url("/services/T0/B0/SECRETxTOKENx0123456789?access_token=SECRETxQUERY");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/services/SECRETxTOKENx0123456789", listener.local_addr().unwrap())
    };

    let mut records = Vec::new();
    for url in [&url, &url, &url, &closed] {
        let rig = rig_for(AlertSettings::new(url).unwrap().with_format(WebhookFormat::Slack));
        records.push(rig.run(&envelope(SEND_ALERT, alert(Some("db")))).await);
    }
    let states: Vec<TaskState> = records.iter().map(|r| r.state).collect();
    assert_eq!(states, [TaskState::Retry, TaskState::Failure, TaskState::Success, TaskState::Retry]);
    assert!(records[3].error.as_ref().unwrap().message.contains("connection failed"), "{:?}", records[3].error);
    assert_eq!(hook.received()[2].query.as_deref(), Some("access_token=SECRETxQUERY"), "the real URL was used");

    let recorded = serde_json::to_string(&records).unwrap();
    assert!(!recorded.contains("SECRET"), "a secret reached a record: {recorded}");
    let logged = logs.text();
    assert!(logged.contains("alert delivered") && logged.contains("alert not delivered"), "{logged}");
    assert!(!logged.contains("SECRET"), "a secret reached the logs:\n{logged}");
    assert!(!logged.contains("db down"), "an argument reached the logs:\n{logged}");
}
