//! One conformance suite for every `StateStore` and `TaskQueue`: the embedded (SQLite)
//! implementations and DynamoDB/SQS on the emulator must keep the same semantics.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use taskbeat::backend::{Backend, QueuePair};
use taskbeat::manifest::Manifest;
use taskbeat::queue::{OutgoingMessage, QueueError, TaskQueue};
use taskbeat::record::{ErrorInfo, TaskRecord};
use taskbeat::sqlite::Db;
use taskbeat::store::{
    ClaimOutcome, ClaimRequest, Completion, ListBy, ListQuery, ProgressUpdate, StateStore, StoreError,
};
use taskbeat::{Envelope, TaskState};
use taskbeat_e2e::emulator;
use tokio::time::Instant;
use uuid::Uuid;

fn claim_request(id: Uuid, task: &str) -> ClaimRequest {
    ClaimRequest {
        id,
        task: task.into(),
        queue: "default".into(),
        args: vec![json!("a")],
        kwargs: Default::default(),
        retries: 0,
        parent_id: None,
        root_id: None,
        lease: chrono::Duration::seconds(60),
    }
}

async fn store_suite(store: Arc<dyn StateStore>) {
    // create: once per id.
    let envelope = Envelope::new("conf.create", vec![json!(1)], Default::default());
    let pending = TaskRecord::pending(&envelope, "default");
    store.create(&pending).await.unwrap();
    assert_eq!(store.create(&pending).await, Err(StoreError::AlreadyExists(envelope.id)));
    assert_eq!(store.get(envelope.id).await.unwrap().unwrap().state, TaskState::Pending);
    assert_eq!(store.get(Uuid::new_v4()).await.unwrap(), None);

    // claim: from PENDING, a live lease refuses a second claim, an expired one allows it.
    let mut claim = claim_request(envelope.id, "conf.create");
    let ClaimOutcome::Claimed(claimed) = store.claim(&claim).await.unwrap() else { panic!("first claim") };
    assert_eq!((claimed.state, claimed.args.clone()), (TaskState::Started, vec![json!(1)]), "keeps the sent args");
    assert!(matches!(store.claim(&claim).await.unwrap(), ClaimOutcome::Busy { .. }));
    let short = Uuid::new_v4();
    claim = claim_request(short, "conf.lease");
    claim.lease = chrono::Duration::milliseconds(300);
    assert!(matches!(store.claim(&claim).await.unwrap(), ClaimOutcome::Claimed(_)), "claim creates a missing record");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(store.claim(&claim).await.unwrap(), ClaimOutcome::Claimed(_)), "an expired lease can be taken");

    // progress: merged into the record; refused when missing or finished.
    let update = ProgressUpdate {
        progress: Some(50),
        status: Some("处理中...".into()),
        meta: Some(json!({ "status": "处理中...", "progress": 50 }).as_object().unwrap().clone()),
    };
    store.progress(envelope.id, &update).await.unwrap();
    let record = store.get(envelope.id).await.unwrap().unwrap();
    assert_eq!((record.state, record.progress, record.status.as_deref()), (TaskState::Progress, 50, Some("处理中...")));
    assert_eq!(
        store.progress(Uuid::new_v4(), &update).await.map_err(|e| matches!(e, StoreError::NotFound(_))),
        Err(true)
    );

    // complete: RETRY keeps it open, SUCCESS closes it, nothing rewrites a terminal state.
    let mut retry = Completion::new(envelope.id, "conf.create", "default", TaskState::Retry);
    retry.retries = Some(1);
    retry.error = Some(ErrorInfo::new("Upstream", "503"));
    store.complete(&retry).await.unwrap();
    let record = store.get(envelope.id).await.unwrap().unwrap();
    assert_eq!((record.state, record.retries, record.lease_until), (TaskState::Retry, 1, None));
    let mut success = Completion::new(envelope.id, "conf.create", "default", TaskState::Success);
    success.result = Some(json!({ "n": 1, "text": "ünï" }));
    store.complete(&success).await.unwrap();
    let done = store.get(envelope.id).await.unwrap().unwrap();
    assert_eq!((done.state, done.progress, done.error.clone()), (TaskState::Success, 100, None));
    assert_eq!(done.result, success.result);
    assert!(done.finished_at.is_some());
    let late = Completion::new(envelope.id, "conf.create", "default", TaskState::Failure);
    assert!(matches!(store.complete(&late).await, Err(StoreError::Terminal { state: TaskState::Success, .. })));
    assert!(matches!(store.progress(envelope.id, &update).await, Err(StoreError::Terminal { .. })));
    assert_eq!(
        store.claim(&claim_request(envelope.id, "conf.create")).await.unwrap(),
        ClaimOutcome::Finished(TaskState::Success)
    );
    assert!(matches!(store.revoke(envelope.id, "late").await, Err(StoreError::Terminal { .. })));
    assert_eq!(store.get(envelope.id).await.unwrap().unwrap(), done, "untouched by every refused write");

    // complete without a record (a dead-lettered envelope): the record is made whole.
    let orphan = Uuid::new_v4();
    let mut failure = Completion::new(orphan, "conf.orphan", "default", TaskState::Failure);
    failure.error = Some(ErrorInfo::new("UnknownTask", "no such task"));
    store.complete(&failure).await.unwrap();
    let record = store.get(orphan).await.unwrap().unwrap();
    assert_eq!((record.task.as_str(), record.state), ("conf.orphan", TaskState::Failure));

    // revoke: a pending task.
    let to_revoke = Envelope::new("conf.revoke", vec![], Default::default());
    store.create(&TaskRecord::pending(&to_revoke, "default")).await.unwrap();
    assert_eq!(store.revoke(to_revoke.id, "operator").await.unwrap(), TaskState::Pending);
    assert_eq!(
        store.claim(&claim_request(to_revoke.id, "conf.revoke")).await.unwrap(),
        ClaimOutcome::Finished(TaskState::Revoked)
    );
    assert!(matches!(store.revoke(Uuid::new_v4(), "nobody").await, Err(StoreError::NotFound(_))));

    // list: through the indexes, newest first, with since and limit.
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut e = Envelope::new("conf.list", vec![json!(i)], Default::default());
        e.sent_at = Some(chrono::Utc::now() + chrono::Duration::milliseconds(i * 10));
        store.create(&TaskRecord::pending(&e, "default")).await.unwrap();
        ids.push(e.id);
    }
    let by_task =
        store.list(&ListQuery { by: ListBy::Task("conf.list".into()), since: None, limit: 10 }).await.unwrap();
    assert_eq!(by_task.iter().map(|r| r.id).collect::<Vec<_>>(), ids.iter().rev().copied().collect::<Vec<_>>());
    let limited =
        store.list(&ListQuery { by: ListBy::Task("conf.list".into()), since: Some(before), limit: 2 }).await.unwrap();
    assert_eq!(limited.len(), 2);
    let future = store
        .list(&ListQuery {
            by: ListBy::Task("conf.list".into()),
            since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            limit: 10,
        })
        .await
        .unwrap();
    assert!(future.is_empty());
    let pending =
        store.list(&ListQuery { by: ListBy::State(TaskState::Pending), since: None, limit: 10 }).await.unwrap();
    assert!(ids.iter().all(|id| pending.iter().any(|r| r.id == *id)));

    // markers: once per window.
    assert!(store.acquire_marker("conf", Duration::from_millis(500)).await.unwrap());
    assert!(!store.acquire_marker("conf", Duration::from_millis(500)).await.unwrap());
}

async fn receive_some(
    queue: &dyn TaskQueue,
    visibility: Duration,
    within: Duration,
) -> Vec<taskbeat::queue::ReceivedMessage> {
    let started = Instant::now();
    loop {
        let got = queue.receive(10, Duration::from_secs(1), visibility).await.unwrap();
        if !got.is_empty() || started.elapsed() > within {
            return got;
        }
    }
}

/// `pair.queue` must have a redrive to `pair.dead_letters` after 3 receives.
async fn queue_suite(pair: QueuePair) {
    let queue = pair.queue.as_ref();
    // send, receive with attributes, delete.
    let mut message = OutgoingMessage::new("{\"hello\": \"wörld \u{FFFD}\"}");
    message.attributes.insert("origin".into(), "conformance".into());
    let id = queue.send(message.clone()).await.unwrap();
    let got = receive_some(queue, Duration::from_secs(30), Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].message_id.as_str(), got[0].body.as_str(), got[0].receive_count),
        (id.as_str(), message.body.as_str(), 1)
    );
    assert_eq!(got[0].attributes.get("origin").map(String::as_str), Some("conformance"));
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.visible, depth.in_flight), (0, 1));
    queue.delete(&[got[0].receipt_handle.clone()]).await.unwrap();
    assert_eq!(queue.depth().await.unwrap().in_flight, 0);

    // a visibility timeout hides a message, then it comes back with its receive count up.
    queue.send(OutgoingMessage::new("again")).await.unwrap();
    let first = receive_some(queue, Duration::from_secs(1), Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    assert!(queue.receive(10, Duration::ZERO, Duration::from_secs(1)).await.unwrap().is_empty(), "hidden");
    let second = receive_some(queue, Duration::from_secs(30), Duration::from_secs(5)).await;
    assert_eq!((second.len(), second[0].receive_count), (1, 2));
    // change_visibility(0) makes it visible now.
    queue.change_visibility(&second[0].receipt_handle, Duration::ZERO).await.unwrap();
    let third = receive_some(queue, Duration::from_secs(30), Duration::from_secs(5)).await;
    assert_eq!(third[0].receive_count, 3);
    queue.change_visibility(&third[0].receipt_handle, Duration::ZERO).await.unwrap();
    // past the max receive count (3) it moves to the DLQ, body intact.
    assert!(queue.receive(10, Duration::from_secs(1), Duration::from_secs(30)).await.unwrap().is_empty());
    let dead = receive_some(pair.dead_letters.as_ref(), Duration::from_secs(30), Duration::from_secs(5)).await;
    assert_eq!(dead.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), vec!["again"]);
    pair.dead_letters.delete(&[dead[0].receipt_handle.clone()]).await.unwrap();

    // a per-message delay holds it back.
    queue.send(OutgoingMessage { delay: Duration::from_secs(2), ..OutgoingMessage::new("later") }).await.unwrap();
    assert_eq!(queue.depth().await.unwrap().delayed, 1);
    assert!(queue.receive(10, Duration::ZERO, Duration::from_secs(30)).await.unwrap().is_empty());
    let later = receive_some(queue, Duration::from_secs(30), Duration::from_secs(6)).await;
    assert_eq!(later[0].body, "later");
    queue.delete(&[later[0].receipt_handle.clone()]).await.unwrap();

    // limits: size and delay, refused before sending.
    let big = OutgoingMessage::new("x".repeat(queue.max_message_bytes() + 1));
    assert!(matches!(queue.send(big).await, Err(QueueError::TooLarge { .. })));
    let long = OutgoingMessage { delay: Duration::from_secs(901), ..OutgoingMessage::new("x") };
    assert!(matches!(queue.send(long).await, Err(QueueError::DelayTooLong(_))));
    assert_eq!(queue.depth().await.unwrap(), Default::default());
}

fn manifest(project: &str) -> Manifest {
    Manifest::parse(&emulator::user_manifest(project), "conformance").unwrap()
}

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("c.db")).unwrap();
    store_suite(Backend::embedded_on(&manifest("c"), db).store).await;
}

#[tokio::test]
async fn dynamodb_store_conforms() {
    let sdk = emulator::sdk_config().await;
    let m = manifest(&emulator::unique_project("conf"));
    taskbeat::provision::create_missing(&m, &aws_sdk_dynamodb::Client::new(&sdk), &aws_sdk_sqs::Client::new(&sdk))
        .await
        .unwrap();
    store_suite(Backend::aws(&m, &sdk).store).await;
}

#[tokio::test]
async fn embedded_queue_conforms() {
    let db = Db::open(Path::new(":memory:")).unwrap();
    let backend = Backend::embedded_on(&manifest("c"), db);
    queue_suite(backend.queue("default").unwrap().clone()).await;
}

#[tokio::test]
async fn sqs_queue_conforms() {
    let sdk = emulator::sdk_config().await;
    let m = manifest(&emulator::unique_project("conf"));
    taskbeat::provision::create_missing(&m, &aws_sdk_dynamodb::Client::new(&sdk), &aws_sdk_sqs::Client::new(&sdk))
        .await
        .unwrap();
    queue_suite(Backend::aws(&m, &sdk).queue("default").unwrap().clone()).await;
}

/// FIFO: order per group, a group waits while one of its messages is in flight, duplicates
/// of a deduplication id are dropped, delays refused.
async fn fifo_suite(queue: Arc<dyn TaskQueue>) {
    assert!(queue.is_fifo());
    let message = |body: &str, group: &str, dedup: &str| OutgoingMessage {
        group_id: Some(group.into()),
        deduplication_id: Some(dedup.into()),
        ..OutgoingMessage::new(body)
    };
    queue.send(message("a1", "A", "d1")).await.unwrap();
    // Accepted, never delivered (the returned id differs between SQS and its emulators).
    queue.send(message("a1 again", "A", "d1")).await.unwrap();
    queue.send(message("a2", "A", "d2")).await.unwrap();
    queue.send(message("b1", "B", "d3")).await.unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        got.extend(queue.receive(10, Duration::from_secs(1), Duration::from_secs(30)).await.unwrap());
    }
    let bodies: Vec<&str> = got.iter().map(|m| m.body.as_str()).collect();
    let a_order: Vec<&str> = bodies.iter().copied().filter(|b| b.starts_with('a')).collect();
    assert_eq!(a_order, vec!["a1", "a2"], "order kept within group A, the duplicate dropped: {bodies:?}");
    assert!(bodies.contains(&"b1"));
    assert!(got.iter().all(|m| m.group_id.is_some()));
    // A message of group A back in the queue: A is held until it is received again.
    let a1 = got.iter().find(|m| m.body == "a1").unwrap();
    queue.change_visibility(&a1.receipt_handle, Duration::ZERO).await.unwrap();
    let handles: Vec<String> = got.iter().filter(|m| m.body != "a1").map(|m| m.receipt_handle.clone()).collect();
    queue.delete(&handles).await.unwrap();
    queue.send(message("a3", "A", "d4")).await.unwrap();
    let again = receive_some(queue.as_ref(), Duration::from_secs(30), Duration::from_secs(5)).await;
    assert_eq!(again.first().map(|m| m.body.as_str()), Some("a1"), "a1 comes first again");
    let delayed = OutgoingMessage { delay: Duration::from_secs(3), ..message("late", "A", "d5") };
    assert!(matches!(queue.send(delayed).await, Err(QueueError::Fifo { .. })));
}

const FIFO_MANIFEST: &str = "[project]\nname = \"NAME\"\ndefault_queue = \"ordered\"\n[modules.test]\ncrate = \"test\"\nqueue = \"ordered\"\n[queues.ordered]\nfifo = true\n";

#[tokio::test]
async fn embedded_fifo_queue_conforms() {
    let m = Manifest::parse(&FIFO_MANIFEST.replace("NAME", "fifo"), "conformance").unwrap();
    let backend = Backend::embedded_on(&m, Db::open(Path::new(":memory:")).unwrap());
    fifo_suite(backend.queue("ordered").unwrap().queue.clone()).await;
}

#[tokio::test]
async fn sqs_fifo_queue_conforms() {
    let sdk = emulator::sdk_config().await;
    let m = Manifest::parse(&FIFO_MANIFEST.replace("NAME", &emulator::unique_project("fifo")), "conformance").unwrap();
    taskbeat::provision::create_missing(&m, &aws_sdk_dynamodb::Client::new(&sdk), &aws_sdk_sqs::Client::new(&sdk))
        .await
        .unwrap();
    fifo_suite(Backend::aws(&m, &sdk).queue("ordered").unwrap().queue.clone()).await;
}
