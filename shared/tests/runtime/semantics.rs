//! Delivery semantics through the real queue and store of the embedded backend: retries keep
//! the id and wait their backoff, eta and countdown, expiry, revoke, duplicates, sizes, values.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use taskbeat::backend::Backend;
use taskbeat::event::sqs_event;
use taskbeat::handler::{BatchHandler, HandlerOptions};
use taskbeat::queue::QueueDepth;
use taskbeat::record::TaskRecord;
use taskbeat::sqlite::Db;
use taskbeat::testing::{TEST_QUEUE, test_manifest};
use taskbeat::{Client, Registry, SendOptions, TaskContext, TaskError, TaskOptions, TaskState};
use tokio::time::Instant;

/// Runs per key, shared by the tasks below (tests run in parallel: each uses its own key).
fn runs() -> &'static Mutex<HashMap<String, usize>> {
    static RUNS: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    RUNS.get_or_init(Default::default)
}

fn count_run(key: &str) -> usize {
    let mut runs = runs().lock().unwrap();
    let n = runs.entry(key.to_owned()).or_default();
    *n += 1;
    *n
}

fn runs_of(key: &str) -> usize {
    runs().lock().unwrap().get(key).copied().unwrap_or(0)
}

#[derive(Debug, Deserialize)]
struct Key {
    key: String,
}

fn registry() -> Registry {
    let quick_retry =
        TaskOptions { retry_delay: Duration::from_secs(1), retry_jitter: false, ..TaskOptions::default() };
    Registry::new("test")
        .task_with("t.flaky_once", &["key"], quick_retry, |_ctx: TaskContext, a: Key| async move {
            if count_run(&a.key) == 1 {
                return Err(TaskError::retryable("Upstream", "503 the first time"));
            }
            Ok("second time lucky")
        })
        .task("t.asks_retry", &["key"], |ctx: TaskContext, a: Key| async move {
            if count_run(&a.key) == 1 {
                return Err(ctx.retry("not ready yet", Some(Duration::from_secs(1)), Some(1)));
            }
            Ok(ctx.retries())
        })
        .task("t.slow_count", &["key"], |_ctx: TaskContext, a: Key| async move {
            count_run(&a.key);
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(true)
        })
        .task("t.echo", &["value"], |_ctx: TaskContext, a: Map<String, Value>| async move { Ok(a["value"].clone()) })
        .task("t.nan", &[], |_ctx: TaskContext, _: Map<String, Value>| async move {
            Ok(json!({ "nan": f64::NAN, "inf": f64::INFINITY, "ok": 1.5 }))
        })
        .task("t.huge", &[], |_ctx: TaskContext, _: Map<String, Value>| async move { Ok("x".repeat(500 * 1024)) })
        .task("t.until_revoked", &["key"], |ctx: TaskContext, a: Key| async move {
            count_run(&a.key);
            for _ in 0..100 {
                if ctx.is_revoked().await {
                    return Ok("stopped: revoked");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok("ran to the end")
        })
}

struct Rig {
    client: Client,
    handler: BatchHandler,
}

fn rig() -> Rig {
    let manifest = test_manifest("test");
    let backend = Backend::embedded_on(&manifest, Db::open(Path::new(":memory:")).unwrap());
    let client = Client::new(Arc::new(manifest), backend.clone(), "test");
    let pair = backend.queue(TEST_QUEUE).unwrap();
    let handler = BatchHandler::new(
        Arc::new(registry()),
        backend.store.clone(),
        pair.dead_letters.clone(),
        TEST_QUEUE,
        HandlerOptions::default(),
    )
    .with_client(client.clone());
    Rig { client, handler }
}

impl Rig {
    async fn send(&self, task: &str, args: Vec<Value>, options: SendOptions) -> uuid::Uuid {
        self.client.send(task, args, Map::new(), options).await.unwrap()
    }

    /// One poll of the queue, as the local runtime does: receive, handle, delete what is done.
    async fn poll(&self) -> usize {
        let queue = &self.client.backend().queue(TEST_QUEUE).unwrap().queue;
        let messages = queue.receive(10, Duration::ZERO, Duration::from_secs(60)).await.unwrap();
        if messages.is_empty() {
            return 0;
        }
        let response = self.handler.handle(sqs_event("arn:aws:sqs:local:0:test", "local", &messages), None).await;
        let failed: Vec<_> = response.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
        let done: Vec<_> =
            messages.iter().filter(|m| !failed.contains(&m.message_id)).map(|m| m.receipt_handle.clone()).collect();
        queue.delete(&done).await.unwrap();
        messages.len()
    }

    async fn poll_until_terminal(&self, id: uuid::Uuid, within: Duration) -> TaskRecord {
        let started = Instant::now();
        loop {
            self.poll().await;
            let record = self.record(id).await;
            if record.state.is_terminal() {
                return record;
            }
            assert!(started.elapsed() < within, "{id} still {} after {within:?}", record.state);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn record(&self, id: uuid::Uuid) -> TaskRecord {
        self.client.backend().store.get(id).await.unwrap().expect("record")
    }

    async fn depth(&self) -> QueueDepth {
        self.client.backend().queue(TEST_QUEUE).unwrap().queue.depth().await.unwrap()
    }
}

fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_retry_keeps_its_id_and_waits_its_backoff() {
    let rig = rig();
    let k = key();
    let id = rig.send("t.flaky_once", vec![json!(k)], SendOptions::default()).await;
    assert_eq!(rig.poll().await, 1);
    let r = rig.record(id).await;
    assert_eq!((r.state, r.retries), (TaskState::Retry, 1));
    assert_eq!(r.error.as_ref().unwrap().kind, "Upstream");
    // Hidden for the backoff (1 s, no jitter), not redelivered at once.
    assert_eq!(rig.depth().await.in_flight, 1);
    assert_eq!(rig.poll().await, 0);
    let started = Instant::now();
    let done = rig.poll_until_terminal(id, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(700), "waited the backoff");
    assert_eq!(done.state, TaskState::Success);
    assert_eq!(done.result, Some(json!("second time lucky")));
    assert_eq!((done.retries, done.error), (1, None));
    assert_eq!(runs_of(&k), 2);
}

#[tokio::test]
async fn ctx_retry_honours_countdown_and_max_retries() {
    let rig = rig();
    let k = key();
    let id = rig.send("t.asks_retry", vec![json!(k)], SendOptions::default()).await;
    let done = rig.poll_until_terminal(id, Duration::from_secs(5)).await;
    assert_eq!((done.state, done.result), (TaskState::Success, Some(json!(1))));
}

#[tokio::test]
async fn countdown_eta_and_expiry() {
    let rig = rig();
    // A negative countdown runs now.
    let now_id = rig
        .send(
            "t.echo",
            vec![json!(1)],
            SendOptions { countdown: Some(chrono::Duration::seconds(-30)), ..Default::default() },
        )
        .await;
    assert_eq!(rig.poll().await, 1);
    assert_eq!(rig.record(now_id).await.state, TaskState::Success);

    // A countdown within one SQS delay: held back by the queue.
    let soon = rig
        .send(
            "t.echo",
            vec![json!(2)],
            SendOptions { countdown: Some(chrono::Duration::seconds(1)), ..Default::default() },
        )
        .await;
    assert_eq!(rig.depth().await.delayed, 1);
    assert_eq!(rig.poll().await, 0);
    assert_eq!(rig.poll_until_terminal(soon, Duration::from_secs(5)).await.state, TaskState::Success);

    // An eta beyond 900 s: delayed 900 s by the queue, then re-delayed until due, never run early.
    let later = Utc::now() + chrono::Duration::hours(2);
    let far = rig.send("t.echo", vec![json!(3)], SendOptions { eta: Some(later), ..Default::default() }).await;
    assert_eq!(rig.depth().await.delayed, 1);
    assert_eq!(rig.record(far).await.state, TaskState::Pending);
    // Deliver it early by hand (as if the 900 s had passed): handed back, not claimed.
    let mut envelope = taskbeat::Envelope::new("t.echo", vec![json!(3)], Map::new());
    envelope.id = far;
    envelope.eta = Some(later);
    let early = taskbeat::queue::ReceivedMessage {
        message_id: "early".into(),
        receipt_handle: "none".into(),
        body: envelope.to_body(),
        receive_count: 1,
        sent_at: Utc::now(),
        first_received_at: None,
        attributes: Default::default(),
        group_id: None,
    };
    let response = rig.handler.handle(sqs_event("arn", "local", std::slice::from_ref(&early)), None).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(rig.record(far).await.state, TaskState::Pending, "not claimed before its eta");
    // Received again and still not due: replaced by a fresh copy (its receive count starts
    // over, so a far eta never reaches the DLQ), and this delivery is acknowledged.
    let again = taskbeat::queue::ReceivedMessage { receive_count: 2, ..early };
    let before = rig.depth().await;
    let response = rig.handler.handle(sqs_event("arn", "local", &[again]), None).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(rig.depth().await.delayed, before.delayed + 1, "a fresh delayed copy");
    assert_eq!(rig.record(far).await.state, TaskState::Pending);

    // Expired before it ran: REVOKED, not run.
    let gone = rig
        .send(
            "t.echo",
            vec![json!(4)],
            SendOptions { expires: Some(Utc::now() - chrono::Duration::seconds(1)), ..Default::default() },
        )
        .await;
    rig.poll().await;
    let r = rig.record(gone).await;
    assert_eq!((r.state, r.error.unwrap().kind.as_str()), (TaskState::Revoked, "Expired"));
    assert!(r.started_at.is_none());
}

#[tokio::test]
async fn revoked_tasks_never_start_and_running_ones_can_stop() {
    let rig = rig();
    let store = rig.client.backend().store.clone();
    let k = key();
    let pending = rig.send("t.until_revoked", vec![json!(k)], SendOptions::default()).await;
    assert_eq!(store.revoke(pending, "operator").await.unwrap(), TaskState::Pending);
    rig.poll().await;
    assert_eq!(rig.record(pending).await.state, TaskState::Revoked);
    assert_eq!(runs_of(&k), 0, "a revoked task is never started");
    assert_eq!(rig.depth().await, QueueDepth::default(), "its message is acknowledged");

    let k2 = key();
    let running = rig.send("t.until_revoked", vec![json!(k2)], SendOptions::default()).await;
    let poller = tokio::spawn({
        let rig = Rig { client: rig.client.clone(), handler: rig.handler.clone() };
        async move { rig.poll().await }
    });
    while rig.record(running).await.state != TaskState::Started {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.revoke(running, "operator").await.unwrap(), TaskState::Started);
    let started = Instant::now();
    poller.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "the task saw it and stopped");
    let r = rig.record(running).await;
    assert_eq!(r.state, TaskState::Revoked, "its return is not recorded over REVOKED");
    assert!(matches!(store.revoke(running, "again").await, Err(taskbeat::store::StoreError::Terminal { .. })));
}

#[tokio::test]
async fn one_message_on_two_workers_runs_once() {
    let rig = rig();
    let k = key();
    let id = rig.send("t.slow_count", vec![json!(k)], SendOptions::default()).await;
    let queue = &rig.client.backend().queue(TEST_QUEUE).unwrap().queue;
    let messages = queue.receive(1, Duration::ZERO, Duration::from_secs(60)).await.unwrap();
    // SQS's at-least-once: the same message handed to two workers at the same moment.
    let event = || sqs_event("arn", "local", &messages);
    let (a, b) = tokio::join!(rig.handler.handle(event(), None), rig.handler.handle(event(), None));
    assert_eq!(runs_of(&k), 1, "the body ran once");
    assert_eq!(a.batch_item_failures.len() + b.batch_item_failures.len(), 1, "the duplicate is handed back");
    assert_eq!(rig.record(id).await.state, TaskState::Success);
    // Delivered again later: acknowledged without running.
    rig.handler.handle(event(), None).await;
    assert_eq!(runs_of(&k), 1);
}

#[tokio::test]
async fn sizes_and_values() {
    let rig = rig();
    let huge = rig.send("t.huge", vec![], SendOptions::default()).await;
    let nan = rig.send("t.nan", vec![], SendOptions::default()).await;
    let text = "\u{0}\u{1f}\u{7f}\u{FFFE}\u{FFFF}\u{FFFD}\u{10FFFF} 处理中... 🚀 \"q\" \\ é";
    let echo = rig.send("t.echo", vec![json!({ "text": text, "list": [text] })], SendOptions::default()).await;
    rig.poll().await;

    let r = rig.record(huge).await;
    let error = r.error.unwrap();
    assert_eq!((r.state, error.kind.as_str()), (TaskState::Failure, "ResultTooLarge"));
    assert!(error.message.contains("result too large") && error.message.contains("409600"), "{}", error.message);

    // Documented rule: NaN and infinities are written as null.
    assert_eq!(rig.record(nan).await.result, Some(json!({ "nan": null, "inf": null, "ok": 1.5 })));

    let r = rig.record(echo).await;
    assert_eq!(r.result, Some(json!({ "text": text, "list": [text] })), "any Unicode round-trips exactly");
    assert_eq!(r.args, vec![json!({ "text": text, "list": [text] })]);

    // Too large to send: refused before anything is written.
    let big = "y".repeat(300 * 1024);
    let err = rig.client.send("t.echo", vec![json!(big)], Map::new(), SendOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("over queue `test`'s limit of 262144 bytes"), "{err}");
    assert_eq!(rig.depth().await, QueueDepth::default());
}
