//! The batch handler on the embedded backend: outcomes per record, dead letters, panics,
//! retries, time limits, duplicates and progress coalescing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use taskbeat::envelope::Envelope;
use taskbeat::event::sqs_event;
use taskbeat::handler::{BatchHandler, HandlerOptions};
use taskbeat::queue::sqlite::SqliteQueue;
use taskbeat::queue::{REASON_ATTRIBUTE, ReceivedMessage, TaskQueue};
use taskbeat::record::TaskRecord;
use taskbeat::sqlite::Db;
use taskbeat::store::sqlite::SqliteStore;
use taskbeat::store::{ClaimOutcome, ClaimRequest, Completion, ListQuery, ProgressUpdate, StateStore, StoreError};
use taskbeat::{Registry, TaskContext, TaskError, TaskOptions, TaskState};
use tokio::time::Instant;

#[derive(Debug, Deserialize)]
struct Count {
    n: u32,
}

/// Counts progress writes that reach the store.
#[derive(Debug)]
struct CountingStore {
    inner: SqliteStore,
    progress_writes: AtomicUsize,
}

#[async_trait]
impl StateStore for CountingStore {
    async fn create(&self, record: &TaskRecord) -> Result<(), StoreError> {
        self.inner.create(record).await
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.inner.claim(request).await
    }
    async fn progress(&self, id: uuid::Uuid, update: &ProgressUpdate) -> Result<(), StoreError> {
        self.progress_writes.fetch_add(1, Ordering::SeqCst);
        self.inner.progress(id, update).await
    }
    async fn complete(&self, completion: &Completion) -> Result<(), StoreError> {
        self.inner.complete(completion).await
    }
    async fn get(&self, id: uuid::Uuid) -> Result<Option<TaskRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.list(query).await
    }
    async fn acquire_marker(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.acquire_marker(key, ttl).await
    }
}

#[tokio::test]
async fn markers_are_taken_once_per_window() {
    let rig = rig(HandlerOptions::default());
    assert!(rig.store.acquire_marker("alert:db-down", Duration::from_millis(300)).await.unwrap());
    assert!(!rig.store.acquire_marker("alert:db-down", Duration::from_millis(300)).await.unwrap());
    assert!(rig.store.acquire_marker("alert:other", Duration::from_millis(300)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(
        rig.store.acquire_marker("alert:db-down", Duration::from_millis(300)).await.unwrap(),
        "free again after the window"
    );
}

fn registry() -> Registry {
    Registry::new("test")
        .task("t.ok", &["n"], |ctx: TaskContext, a: Count| async move {
            ctx.progress(50, "halfway").await;
            Ok(json!({ "doubled": a.n * 2 }))
        })
        .task("t.tight_loop", &["n"], |ctx: TaskContext, a: Count| async move {
            for i in 0..a.n {
                ctx.progress((i * 100 / a.n) as u8, format!("step {i}")).await;
            }
            Ok(a.n)
        })
        .task("t.panic", &[], |_ctx: TaskContext, _: Map<String, Value>| async move {
            if Utc::now().timestamp() > 0 {
                panic!("boom at the worst time");
            }
            Ok(0)
        })
        .task("t.flaky", &[], |_ctx: TaskContext, _: Map<String, Value>| async move {
            Err::<u8, _>(TaskError::retryable("Upstream", "503 from upstream"))
        })
        .task("t.broken", &[], |_ctx: TaskContext, _: Map<String, Value>| async move {
            Err::<u8, _>(TaskError::permanent("BadInput", "user 7 has no email"))
        })
        .task_with(
            "t.slow",
            &[],
            TaskOptions { time_limit: Some(Duration::from_millis(300)), ..TaskOptions::default() },
            |_ctx: TaskContext, _: Map<String, Value>| async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(1)
            },
        )
}

struct Rig {
    handler: BatchHandler,
    store: Arc<CountingStore>,
    dlq: SqliteQueue,
}

fn rig(options: HandlerOptions) -> Rig {
    let db = Db::open(Path::new(":memory:")).unwrap();
    let store = Arc::new(CountingStore { inner: SqliteStore::new(db.clone()), progress_writes: AtomicUsize::new(0) });
    let dlq = SqliteQueue::new(db, "test-dlq", None);
    let handler = BatchHandler::new(Arc::new(registry()), store.clone(), Arc::new(dlq.clone()), "test", options);
    Rig { handler, store, dlq }
}

fn message(id: &str, body: &str) -> ReceivedMessage {
    ReceivedMessage {
        message_id: id.to_owned(),
        receipt_handle: format!("receipt-{id}"),
        body: body.to_owned(),
        receive_count: 1,
        sent_at: Utc::now(),
        first_received_at: None,
        attributes: BTreeMap::new(),
        group_id: None,
    }
}

fn envelope(task: &str, args: Vec<Value>) -> Envelope {
    Envelope::new(task, args, Map::new())
}

async fn run(rig: &Rig, bodies: &[(&str, String)], deadline: Option<Instant>) -> Vec<String> {
    let messages: Vec<_> = bodies.iter().map(|(id, body)| message(id, body)).collect();
    let event = sqs_event("arn:aws:sqs:local:000000000000:test", "local", &messages);
    let response = rig.handler.handle(event, deadline).await;
    let mut failed: Vec<String> = response.batch_item_failures.into_iter().map(|f| f.item_identifier).collect();
    failed.sort();
    failed
}

async fn record(rig: &Rig, id: uuid::Uuid) -> TaskRecord {
    rig.store.get(id).await.unwrap().expect("record")
}

#[tokio::test]
async fn success_records_result_and_progress() {
    let rig = rig(HandlerOptions::default());
    let ok = envelope("t.ok", vec![json!(21)]);
    assert!(run(&rig, &[("m1", ok.to_body())], None).await.is_empty());
    let r = record(&rig, ok.id).await;
    assert_eq!(r.state, TaskState::Success);
    assert_eq!(r.result, Some(json!({ "doubled": 42 })));
    assert_eq!(r.progress, 100);
    assert_eq!(r.status.as_deref(), Some("halfway"));
    assert!(r.started_at.is_some() && r.finished_at.is_some() && r.lease_until.is_none());
}

#[tokio::test]
async fn bad_records_are_dead_lettered_without_failing_neighbours() {
    let rig = rig(HandlerOptions::default());
    let ok = envelope("t.ok", vec![json!(1)]);
    let unknown = envelope("app.schedules.nope", vec![json!("kept")]);
    let broken_with_id = format!(r#"{{"version":1,"id":"{}","task":"t.ok","args":"oops"}}"#, uuid::Uuid::new_v4());
    let batch = [
        ("good", ok.to_body()),
        ("not-json", "this is not json".to_owned()),
        ("unknown", unknown.to_body()),
        ("wrong-type", broken_with_id),
        ("empty", String::new()),
    ];
    assert!(run(&rig, &batch, None).await.is_empty(), "no record is handed back");
    assert_eq!(record(&rig, ok.id).await.state, TaskState::Success);
    let failed = record(&rig, unknown.id).await;
    assert_eq!(failed.state, TaskState::Failure);
    assert_eq!(failed.error.as_ref().unwrap().kind, "UnknownTask");
    assert!(failed.error.unwrap().message.contains("app.schedules.nope"));
    assert_eq!(failed.args, [json!("kept")], "kept for a retry once the module is deployed");

    let dead = rig.dlq.receive(10, Duration::ZERO, Duration::from_secs(30)).await.unwrap();
    assert_eq!(dead.len(), 4);
    let reasons: Vec<&str> = dead.iter().map(|m| m.attributes[REASON_ATTRIBUTE].as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("not JSON")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("unknown task `app.schedules.nope`")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("`args`")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("empty")), "{reasons:?}");
    assert!(dead.iter().any(|m| m.body == "this is not json"), "body kept as sent");
}

#[tokio::test]
async fn a_panic_fails_only_its_own_record() {
    let rig = rig(HandlerOptions::default());
    let boom = envelope("t.panic", vec![]);
    let ok = envelope("t.ok", vec![json!(2)]);
    assert!(run(&rig, &[("a", boom.to_body()), ("b", ok.to_body())], None).await.is_empty());
    let r = record(&rig, boom.id).await;
    assert_eq!(r.state, TaskState::Failure);
    let error = r.error.unwrap();
    assert_eq!(error.kind, "panic");
    assert!(error.message.contains("boom at the worst time"));
    assert_eq!(record(&rig, ok.id).await.state, TaskState::Success);
}

#[tokio::test]
async fn retryable_failures_hand_back_exactly_their_message() {
    let rig = rig(HandlerOptions::default());
    let flaky = envelope("t.flaky", vec![]);
    let broken = envelope("t.broken", vec![]);
    let ok = envelope("t.ok", vec![json!(3)]);
    let batch = [("flaky", flaky.to_body()), ("broken", broken.to_body()), ("ok", ok.to_body())];
    assert_eq!(run(&rig, &batch, None).await, vec!["flaky".to_owned()]);
    let r = record(&rig, flaky.id).await;
    assert_eq!((r.state, r.retries), (TaskState::Retry, 1));
    assert_eq!(r.error.unwrap().kind, "Upstream");
    let b = record(&rig, broken.id).await;
    assert_eq!(b.state, TaskState::Failure);
    assert_eq!(b.error.unwrap().message, "user 7 has no email");

    // Redelivered until retries are exhausted, then FAILURE with the last error.
    for attempt in 2..=4 {
        let failed = run(&rig, &[("flaky", flaky.to_body())], None).await;
        let r = record(&rig, flaky.id).await;
        if attempt <= 3 {
            assert_eq!(failed, vec!["flaky".to_owned()]);
            assert_eq!((r.state, r.retries), (TaskState::Retry, attempt));
        } else {
            assert!(failed.is_empty());
            assert_eq!((r.state, r.retries), (TaskState::Failure, 3));
        }
    }
}

#[tokio::test]
async fn invalid_arguments_fail_with_a_message() {
    let rig = rig(HandlerOptions::default());
    let bad = envelope("t.ok", vec![json!("twenty")]);
    let extra = envelope("t.ok", vec![json!(1), json!(2)]);
    assert!(run(&rig, &[("a", bad.to_body()), ("b", extra.to_body())], None).await.is_empty());
    let r = record(&rig, bad.id).await;
    assert_eq!(r.state, TaskState::Failure);
    let error = r.error.unwrap();
    assert_eq!(error.kind, "InvalidArguments");
    assert!(error.message.contains("`n`"), "{}", error.message);
    assert!(record(&rig, extra.id).await.error.unwrap().message.contains("takes 1 positional"));
}

#[tokio::test]
async fn time_limits_stop_the_task_and_record_it_before_the_deadline() {
    let rig = rig(HandlerOptions { safety_margin: Duration::from_millis(200), ..HandlerOptions::default() });
    let slow = envelope("t.slow", vec![]);
    let started = Instant::now();
    assert!(run(&rig, &[("s", slow.to_body())], Some(Instant::now() + Duration::from_secs(5))).await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = record(&rig, slow.id).await;
    assert_eq!(r.state, TaskState::Failure);
    assert_eq!(r.error.unwrap().kind, "TimeLimitExceeded");

    // The function's deadline is nearer than the task's limit: stopped before it.
    let near = self::rig(HandlerOptions { safety_margin: Duration::from_millis(100), ..HandlerOptions::default() });
    let slow_again = envelope("t.slow", vec![]);
    let deadline = Instant::now() + Duration::from_millis(250);
    let failed = run(&near, &[("s", slow_again.to_body())], Some(deadline)).await;
    assert!(Instant::now() < deadline, "recorded before the deadline");
    // Cut short by the function, not by its own limit: retried, never left STARTED.
    let r = record(&near, slow_again.id).await;
    assert_eq!((r.state, r.error.unwrap().kind.as_str()), (TaskState::Retry, "FunctionTimeout"));
    assert_eq!(failed, vec!["s".to_owned()]);
}

#[tokio::test]
async fn duplicates_never_run_twice() {
    let rig = rig(HandlerOptions::default());
    let ok = envelope("t.ok", vec![json!(5)]);
    // A live claim elsewhere: the delivery is handed back.
    let claim = ClaimRequest {
        id: ok.id,
        task: ok.task.clone(),
        queue: "test".into(),
        args: ok.args.clone(),
        kwargs: Map::new(),
        retries: 0,
        parent_id: None,
        root_id: None,
        lease: chrono::Duration::seconds(60),
    };
    assert!(matches!(rig.store.claim(&claim).await.unwrap(), ClaimOutcome::Claimed(_)));
    assert_eq!(run(&rig, &[("dup", ok.to_body())], None).await, vec!["dup".to_owned()]);

    // Finished: a late duplicate is acknowledged and the result kept.
    let done = envelope("t.ok", vec![json!(6)]);
    assert!(run(&rig, &[("first", done.to_body())], None).await.is_empty());
    let before = record(&rig, done.id).await;
    assert!(run(&rig, &[("again", done.to_body())], None).await.is_empty());
    assert_eq!(record(&rig, done.id).await, before);
}

#[tokio::test]
async fn expired_tasks_are_revoked_not_run() {
    let rig = rig(HandlerOptions::default());
    let parent = uuid::Uuid::new_v4();
    let mut late = envelope("t.ok", vec![json!(1)]);
    late.expires = Some(Utc::now() - chrono::Duration::seconds(1));
    late.kwargs.insert("k".into(), json!("v"));
    late.parent_id = Some(parent);
    assert!(run(&rig, &[("late", late.to_body())], None).await.is_empty());
    let r = record(&rig, late.id).await;
    assert_eq!(r.state, TaskState::Revoked);
    // The first write of a task no producer recorded keeps its invocation, so `retry` can send it.
    assert_eq!(
        (r.args.clone(), r.kwargs.get("k").cloned(), r.parent_id),
        (vec![json!(1)], Some(json!("v")), Some(parent))
    );
    assert_eq!(r.error.unwrap().kind, "Expired");
    assert!(r.started_at.is_none());
}

#[tokio::test]
async fn progress_in_a_tight_loop_is_coalesced_and_the_last_report_kept() {
    let rig = rig(HandlerOptions { progress_interval: Duration::from_millis(200), ..HandlerOptions::default() });
    let busy = envelope("t.tight_loop", vec![json!(10_000)]);
    assert!(run(&rig, &[("busy", busy.to_body())], None).await.is_empty());
    let writes = rig.store.progress_writes.load(Ordering::SeqCst);
    assert!(writes <= 5, "{writes} progress writes for 10000 reports");
    let r = record(&rig, busy.id).await;
    assert_eq!(r.state, TaskState::Success);
    assert_eq!(r.status.as_deref(), Some("step 9999"), "the last report is merged into the final write");
}
