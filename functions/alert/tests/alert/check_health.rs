//! `check_health` against local targets answering 200, 500, slowly or not at all; its alert is a
//! real child task on the `alerts` queue, delivered when run.

use std::time::Duration;

use serde_json::{Value, json};
use taskbeat::TaskState;
use taskbeat::handler::HandlerOptions;
use taskbeat_alert::{AlertSettings, CHECK_HEALTH, DUPLICATE, HealthReport, SEND_ALERT, WebhookFormat, registry_with};
use taskbeat_e2e::fake_webhook::{self, FakeWebhook, Targets};

use crate::rig::{Rig, envelope};

async fn setup() -> (Rig, Targets, FakeWebhook) {
    let targets = fake_webhook::spawn_targets().await;
    let hook = fake_webhook::spawn([]).await;
    let settings = AlertSettings::new(&hook.url("/hook")).unwrap().with_format(WebhookFormat::Slack);
    (Rig::new(registry_with(settings)), targets, hook)
}

fn report(record: &taskbeat::record::TaskRecord) -> HealthReport {
    assert_eq!(record.state, TaskState::Success, "{:?}", record.error);
    serde_json::from_value(record.result.clone().unwrap()).unwrap()
}

#[tokio::test]
async fn healthy_targets_raise_no_alert() {
    let (rig, targets, hook) = setup().await;
    let call = envelope(
        CHECK_HEALTH,
        json!({ "targets": [
            { "name": "api", "url": targets.url("/ok") },
            { "name": "teapot", "url": targets.url("/status/418"), "expected_status": 418, "timeout": 2 },
        ]}),
    );
    let record = rig.run(&call).await;
    let result = report(&record);
    assert_eq!((result.healthy, result.failing, result.alert_task_id), (2, 0, None));
    assert_eq!(result.targets[0].name, "api");
    assert_eq!(
        (result.targets[0].ok, result.targets[0].status, result.targets[0].error.as_deref()),
        (true, Some(200), None)
    );
    assert_eq!((result.targets[1].ok, result.targets[1].status), (true, Some(418)));
    assert_eq!(record.progress, 100);
    assert_eq!(record.status.as_deref(), Some("checked 2/2 targets, 0 failing"));
    assert!(rig.take_queued("alerts").await.is_empty(), "no alert sent");
    assert!(hook.received().is_empty());
}

#[tokio::test]
async fn failing_targets_send_one_alert_as_a_child_task() {
    let (rig, targets, hook) = setup().await;
    let with_secrets = targets.url("/fail?token=SECRETxQUERY").replace("http://", "http://admin:SECRETxPW@");
    let call = envelope(
        CHECK_HEALTH,
        json!({ "targets": [
            { "name": "api", "url": targets.url("/ok") },
            { "name": "db", "url": targets.url("/fail") },
            { "name": "search", "url": targets.url("/slow/3000"), "timeout": 0.3 },
            { "name": "billing", "url": with_secrets },
        ]}),
    );
    let record = rig.run(&call).await;
    let result = report(&record);
    assert_eq!((result.healthy, result.failing), (1, 3));
    let by_name = |name: &str| result.targets.iter().find(|t| t.name == name).unwrap().clone();
    let names: Vec<&str> = result.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["api", "db", "search", "billing"], "in the order given");
    let db = by_name("db");
    assert_eq!((db.ok, db.status, db.error.as_deref()), (false, Some(500), Some("expected status 200, got 500")));
    let search = by_name("search");
    assert_eq!((search.ok, search.status, search.error.as_deref()), (false, None, Some("no answer within 0.3 s")));
    assert!(search.latency_ms >= 300 && search.latency_ms < 3000, "cut at its timeout: {}", search.latency_ms);
    assert_eq!(record.status.as_deref(), Some("checked 4/4 targets, 3 failing"));

    // The alert is a child task, queued with this task as its parent.
    let alert_id = result.alert_task_id.expect("an alert was sent");
    let queued = rig.take_queued("alerts").await;
    assert_eq!(queued.len(), 1);
    let child = &queued[0];
    assert_eq!((child.id, child.task.as_str()), (alert_id, SEND_ALERT));
    assert_eq!((child.parent_id, child.root_id), (Some(call.id), Some(call.id)));
    assert_eq!(child.kwargs["level"], json!("error"));
    assert_eq!(child.kwargs["title"], json!("Health check: 3 of 4 targets failing"));
    assert_eq!(child.kwargs["dedup_key"], json!("health:billing,db,search"));
    let text = child.kwargs["text"].as_str().unwrap();
    let expected = format!(
        "- db ({}): expected status 200, got 500\n- search ({}): no answer within 0.3 s\n- billing ({}): expected status 200, got 500",
        targets.url("/fail"),
        targets.url("/slow/3000"),
        targets.url("/fail"),
    );
    assert_eq!(text, expected);
    let child_record = rig.record(alert_id).await;
    assert_eq!((child_record.state, child_record.parent_id), (TaskState::Pending, Some(call.id)));
    assert!(!serde_json::to_string(&result).unwrap().contains("SECRET"));

    // Run as the worker would: the webhook gets the list.
    let delivered = rig.run(child).await;
    assert_eq!(delivered.state, TaskState::Success, "{:?}", delivered.error);
    let received = hook.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].body,
        json!({ "text": format!("[ERROR] Health check: 3 of 4 targets failing\n{expected}") })
    );
}

#[tokio::test]
async fn the_same_failures_alert_once_per_window() {
    let (rig, targets, hook) = setup().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/health", listener.local_addr().unwrap())
    };
    let targets = json!({ "targets": [
        { "name": "db", "url": targets.url("/fail") },
        { "name": "cache", "url": closed },
    ]});
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let record = rig.run(&envelope(CHECK_HEALTH, targets.clone())).await;
        let result = report(&record);
        let cache = result.targets.iter().find(|t| t.name == "cache").unwrap();
        assert!(cache.error.as_deref().unwrap().starts_with("connection failed"), "{:?}", cache.error);
        let child = rig.take_queued("alerts").await.pop().unwrap();
        assert_eq!(child.id, result.alert_task_id.unwrap());
        assert_eq!(child.kwargs["level"], json!("critical"), "every target is down");
        assert_eq!(child.kwargs["dedup_key"], json!("health:cache,db"));
        outcomes.push(rig.run(&child).await.result.unwrap());
    }
    assert_eq!(outcomes[0]["delivered"], json!(true));
    assert_eq!(outcomes[1]["reason"], json!(DUPLICATE));
    assert_eq!(hook.received().len(), 1);
}

#[tokio::test]
async fn a_probe_never_outlives_the_task() {
    let targets = fake_webhook::spawn_targets().await;
    let settings = AlertSettings::new("http://127.0.0.1:9/hook").unwrap();
    let options = HandlerOptions { default_time_limit: Duration::from_secs(4), ..HandlerOptions::default() };
    let rig = Rig::with_options(registry_with(settings), options);
    // Its own 30 s would run past the task's 4 s: it is cut to leave time for the alert.
    let call = envelope(
        CHECK_HEALTH,
        json!({ "targets": [{ "name": "stuck", "url": targets.url("/slow/20000"), "timeout": 30 }] }),
    );
    let result = report(&rig.run(&call).await);
    assert_eq!(result.targets[0].error.as_deref(), Some("no answer within 1 s"), "{result:?}");
    assert!(result.alert_task_id.is_some(), "the alert still went out");
}

#[tokio::test]
async fn targets_are_probed_concurrently() {
    let (rig, targets, _hook) = setup().await;
    // Each answers only once all five are waiting at once: one after another, all would fail.
    let five: Vec<Value> =
        (0..5).map(|i| json!({ "name": format!("t{i}"), "url": targets.url("/together/5"), "timeout": 10 })).collect();
    let result = report(&rig.run(&envelope(CHECK_HEALTH, json!({ "targets": five }))).await);
    assert_eq!((result.healthy, result.failing), (5, 0), "{:?}", result.targets);
}

#[tokio::test]
async fn bad_targets_are_refused_before_probing() {
    let (rig, _targets, hook) = setup().await;
    let cases = [
        (json!({ "targets": [] }), "`targets` is empty"),
        (json!({ "targets": [{ "name": "api", "url": "http://a/", "expect": 200 }] }), "unknown field `expect`"),
        (json!({ "targets": [{ "url": "http://a/" }] }), "missing field `name`"),
        (json!({ "targets": [{ "name": "api", "url": "nope" }] }), "targets[0] (`api`): `url` is not an http(s) URL"),
        (json!({ "targets": "http://a/" }), "argument `targets`"),
    ];
    for (kwargs, message) in cases {
        let record = rig.run(&envelope(CHECK_HEALTH, kwargs.clone())).await;
        assert_eq!(record.state, TaskState::Failure, "{kwargs}");
        let error = record.error.unwrap();
        assert_eq!(error.kind, "InvalidArguments", "{kwargs}");
        assert!(error.message.contains(message), "{kwargs}: {}", error.message);
    }
    assert!(rig.take_queued("alerts").await.is_empty());
    assert!(hook.received().is_empty());
}
