//! One conformance suite for every `StateStore` and `TaskQueue`: the embedded (SQLite)
//! implementations and DynamoDB/SQS on the emulator must keep the same semantics.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use taskbeat::backend::{Backend, QueuePair};
use taskbeat::manifest::Manifest;
use taskbeat::queue::dead_letters::{self, RecordFate, Selection};
use taskbeat::queue::{MoveMethod, OutgoingMessage, QueueError, TaskQueue, dead_letter_attributes};
use taskbeat::record::{ErrorInfo, HISTORY_LIMIT, HISTORY_TRIMMED_TO, TaskRecord};
use taskbeat::sqlite::Db;
use taskbeat::store::{
    ClaimOutcome, ClaimRequest, Completion, ListBy, ListCursor, ListFilter, ListQuery, ProgressUpdate, StateStore,
    StoreError, list_tasks,
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
    assert_eq!(states(&record), [TaskState::Pending, TaskState::Started, TaskState::Progress]);
    store.progress(envelope.id, &ProgressUpdate { progress: Some(60), ..Default::default() }).await.unwrap();
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
    // Every state change, in order, each once (a second progress report is not a change).
    assert_eq!(
        states(&done),
        [TaskState::Pending, TaskState::Started, TaskState::Progress, TaskState::Retry, TaskState::Success]
    );
    assert!(done.history.windows(2).all(|w| w[0].at <= w[1].at), "{:?}", done.history);
    assert_eq!(done.history.last().map(|c| c.at), done.finished_at);
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
    let parent = Uuid::new_v4();
    let mut failure = Completion::new(orphan, "conf.orphan", "default", TaskState::Failure);
    failure.error = Some(ErrorInfo::new("UnknownTask", "no such task"));
    failure.args = vec![json!(["u1"]), json!("recompute")];
    failure.kwargs.insert("dry_run".into(), json!(true));
    failure.parent_id = Some(parent);
    store.complete(&failure).await.unwrap();
    let record = store.get(orphan).await.unwrap().unwrap();
    assert_eq!((record.task.as_str(), record.state), ("conf.orphan", TaskState::Failure));
    assert_eq!(
        (&record.args, record.kwargs.get("dry_run"), record.parent_id),
        (&failure.args, Some(&json!(true)), Some(parent))
    );
    assert_eq!(states(&record), [TaskState::Failure]);

    // reopen: only the FAILURE of a dead-lettering becomes PENDING again.
    assert_eq!(store.reopen_dead_letter(orphan).await, Ok(true));
    let reopened = store.get(orphan).await.unwrap().unwrap();
    assert_eq!((reopened.state, reopened.error.clone(), reopened.finished_at), (TaskState::Pending, None, None));
    assert_eq!(states(&reopened), [TaskState::Failure, TaskState::Pending]);
    assert!(matches!(store.claim(&claim_request(orphan, "conf.orphan")).await.unwrap(), ClaimOutcome::Claimed(_)));
    assert_eq!(store.reopen_dead_letter(orphan).await, Ok(false), "running: nothing to reopen");
    assert_eq!(store.reopen_dead_letter(Uuid::new_v4()).await, Ok(false), "no record");
    assert!(store.get(Uuid::new_v4()).await.unwrap().is_none());
    assert_eq!(
        store.reopen_dead_letter(envelope.id).await,
        Err(StoreError::Terminal { id: envelope.id, state: TaskState::Success })
    );
    let ran = Uuid::new_v4();
    let mut failed_run = Completion::new(ran, "conf.ran", "default", TaskState::Failure);
    failed_run.error = Some(ErrorInfo::new("HttpError", "503"));
    store.complete(&failed_run).await.unwrap();
    assert_eq!(
        store.reopen_dead_letter(ran).await,
        Err(StoreError::Terminal { id: ran, state: TaskState::Failure }),
        "a task that failed by running is not reopened"
    );
    assert_eq!(store.get(ran).await.unwrap().unwrap().state, TaskState::Failure);

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

    paging_suite(store.as_ref()).await;
    history_cap_suite(store.as_ref()).await;
}

fn states(record: &TaskRecord) -> Vec<TaskState> {
    record.history.iter().map(|c| c.state).collect()
}

/// Pages never skip or repeat a record, even among records created in the same millisecond;
/// the merged listing (no filter) is the per-state listings merged.
async fn paging_suite(store: &dyn StateStore) {
    let same_time = chrono::Utc::now() - chrono::Duration::seconds(5);
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut e = Envelope::new("conf.page", vec![json!(i)], Default::default());
        e.sent_at = Some(if i < 5 { same_time } else { same_time + chrono::Duration::milliseconds(i) });
        store.create(&TaskRecord::pending(&e, "default")).await.unwrap();
        ids.push((e.sent_at.unwrap(), e.id));
    }
    ids.sort_by(|a, b| b.cmp(a));
    let expected: Vec<Uuid> = ids.iter().map(|(_, id)| *id).collect();
    for page_size in [1, 2, 3, 7] {
        let query = ListQuery { by: ListBy::Task("conf.page".into()), since: None, limit: page_size };
        let mut cursor: Option<ListCursor> = None;
        let mut seen = Vec::new();
        loop {
            let page = store.list_page(&query, cursor.as_ref()).await.unwrap();
            seen.extend(page.iter().map(|r| r.id));
            match page.last() {
                Some(last) if page.len() == page_size => cursor = Some(ListCursor::after(last)),
                _ => break,
            }
        }
        assert_eq!(seen, expected, "pages of {page_size}");
    }
    // A cursor survives its text form.
    let cursor = ListCursor::after(&store.get(expected[3]).await.unwrap().unwrap());
    assert_eq!(cursor.to_string().parse::<ListCursor>(), Ok(cursor));
    assert!("yesterday".parse::<ListCursor>().is_err());

    // By task and state: the task index filtered by state.
    let one = expected[0];
    store.claim(&claim_request(one, "conf.page")).await.unwrap();
    let started = store
        .list(&ListQuery { by: ListBy::TaskAndState("conf.page".into(), TaskState::Started), since: None, limit: 10 })
        .await
        .unwrap();
    assert_eq!(started.iter().map(|r| r.id).collect::<Vec<_>>(), vec![one]);

    // Every record, merged from the per-state indexes, page by page: the same as all states'
    // listings merged at once.
    let mut everything = Vec::new();
    for state in TaskState::ALL {
        everything.extend(store.list(&ListQuery { by: ListBy::State(state), since: None, limit: 1000 }).await.unwrap());
    }
    everything.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
    let everything: Vec<Uuid> = everything.iter().map(|r| r.id).collect();
    let mut cursor = None;
    let mut paged = Vec::new();
    loop {
        let page = list_tasks(store, &ListFilter::default(), cursor.as_ref(), 4).await.unwrap();
        assert!(page.records.len() <= 4);
        paged.extend(page.records.iter().map(|r| r.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, everything);
    let filtered = ListFilter { state: Some(TaskState::Pending), task: Some("conf.page".into()), since: None };
    let page = list_tasks(store, &filtered, None, 10).await.unwrap();
    assert_eq!((page.records.len(), page.next), (6, None));
    let recent = ListFilter { since: Some(same_time + chrono::Duration::milliseconds(5)), ..filtered };
    assert_eq!(list_tasks(store, &recent, None, 10).await.unwrap().records.len(), 1);
}

/// A task that changes state without end keeps its newest changes only, and both backends
/// keep the same ones: past HISTORY_LIMIT at a state change, cut back to HISTORY_TRIMMED_TO
/// (a run's PROGRESS entry is filed, and counted, with the run's next change).
async fn history_cap_suite(store: &dyn StateStore) {
    let envelope = Envelope::new("conf.history", vec![], Default::default());
    store.create(&TaskRecord::pending(&envelope, "default")).await.unwrap();
    let mut expected = vec![TaskState::Pending];
    let trim = |expected: &mut Vec<TaskState>| {
        if expected.len() > HISTORY_LIMIT {
            expected.drain(..expected.len() - HISTORY_TRIMMED_TO);
        }
    };
    let mut longest = 0;
    for run in 0..25 {
        store.claim(&claim_request(envelope.id, "conf.history")).await.unwrap();
        expected.push(TaskState::Started);
        trim(&mut expected);
        assert_eq!(states(&store.get(envelope.id).await.unwrap().unwrap()), expected, "run {run} claimed");
        if run % 2 == 0 {
            store.progress(envelope.id, &ProgressUpdate { progress: Some(10), ..Default::default() }).await.unwrap();
            store.progress(envelope.id, &ProgressUpdate { progress: Some(20), ..Default::default() }).await.unwrap();
            expected.push(TaskState::Progress);
            assert_eq!(states(&store.get(envelope.id).await.unwrap().unwrap()), expected, "run {run} progress");
        }
        let mut retry = Completion::new(envelope.id, "conf.history", "default", TaskState::Retry);
        retry.retries = Some(run + 1);
        store.complete(&retry).await.unwrap();
        expected.push(TaskState::Retry);
        trim(&mut expected);
        let record = store.get(envelope.id).await.unwrap().unwrap();
        assert_eq!(states(&record), expected, "run {run} retried");
        longest = longest.max(record.history.len());
    }
    assert!(longest <= HISTORY_LIMIT && expected.len() < 60, "trimmed: {longest} entries at most");
    assert_ne!(expected[0], TaskState::Pending, "the oldest changes were dropped");
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

/// The DynamoDB store that also writes Celery's result items (`[celery] results = true`) keeps
/// every rule of the store it wraps.
#[tokio::test]
async fn dynamodb_store_with_celery_results_conforms() {
    let sdk = emulator::sdk_config().await;
    let project = emulator::unique_project("conf");
    let text = format!("{}\n[celery]\nresults = true\n", emulator::user_manifest(&project));
    let m = Manifest::parse(&text, "conformance").unwrap();
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

/// Dead letters: looked at without being consumed, moved back one or all with body,
/// attributes and count intact.
async fn dead_letter_suite(pair: QueuePair, expected_method: MoveMethod) {
    let (dlq, queue) = (pair.dead_letters.as_ref(), pair.queue.as_ref());
    let mut sent = Vec::new();
    for i in 0..3 {
        let mut message = OutgoingMessage::new(format!("{{\"dead\": {i}}}"));
        message.attributes = dead_letter_attributes(&format!("reason {i}: ünï"), "default");
        message.attributes.insert("origin".into(), format!("producer-{i}"));
        sent.push(message.clone());
        dlq.send(message).await.unwrap();
    }
    let looked = dlq.peek(10).await.unwrap();
    assert_eq!(looked.len(), 3);
    for message in &sent {
        let found = looked.iter().find(|m| m.body == message.body).unwrap();
        assert_eq!(found.attributes, message.attributes);
    }
    let depth = dlq.depth().await.unwrap();
    assert_eq!((depth.visible, depth.in_flight), (3, 0), "looked at, not consumed");
    assert_eq!(dlq.peek(10).await.unwrap().len(), 3, "still there");

    // One message back.
    let first = &looked[0];
    let one = dlq.move_messages(queue, Some(std::slice::from_ref(&first.message_id))).await.unwrap();
    assert_eq!(
        (one.count, one.method),
        (1, if expected_method == MoveMethod::Embedded { MoveMethod::Embedded } else { MoveMethod::ReceiveSendDelete })
    );
    assert_eq!(one.moved[0].message_id, first.message_id);
    assert_eq!((dlq.depth().await.unwrap().visible, queue.depth().await.unwrap().visible), (2, 1));
    // The rest.
    let rest = dlq.move_messages(queue, None).await.unwrap();
    assert_eq!((rest.count, rest.method), (2, expected_method));
    assert_eq!(dlq.depth().await.unwrap(), Default::default(), "nothing left behind");
    let back = receive_some(queue, Duration::from_secs(30), Duration::from_secs(5)).await;
    let mut bodies: Vec<&str> = back.iter().map(|m| m.body.as_str()).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, sent.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), "all back, none twice");
    for message in &back {
        let original = sent.iter().find(|s| s.body == message.body).unwrap();
        assert_eq!(message.attributes, original.attributes, "attributes intact");
    }
    assert!(dlq.move_messages(queue, Some(&["no-such-id".into()])).await.unwrap().moved.is_empty());

    // purge: everything goes, in flight included.
    queue.send(OutgoingMessage::new("one more")).await.unwrap();
    assert!(queue.purge().await.unwrap() >= 4);
    assert_eq!(queue.depth().await.unwrap(), Default::default());
    assert!(queue.receive(10, Duration::from_secs(1), Duration::from_secs(30)).await.unwrap().is_empty());
}

/// A redrive reopens the task a dead-lettering failed, so it runs when its message is back.
async fn redrive_suite(backend: &Backend) {
    let pair = backend.queue("default").unwrap();
    let store = backend.store.as_ref();
    let envelope = Envelope::new(
        "app.schedules.user_task.process_users",
        vec![json!(["u1"]), json!("recompute")],
        Default::default(),
    );
    let mut failed = Completion::new(envelope.id, &envelope.task, "default", TaskState::Failure);
    failed.error = Some(ErrorInfo::new("UnknownTask", "module `x` has no such task"));
    store.complete(&failed).await.unwrap();
    let mut message = OutgoingMessage::new(envelope.to_body());
    message.attributes = dead_letter_attributes("unknown task", "default");
    pair.dead_letters.send(message).await.unwrap();
    pair.dead_letters.send(OutgoingMessage::new("not json at all")).await.unwrap();

    let looked = dead_letters::look(pair.dead_letters.as_ref(), 10).await.unwrap();
    let letter = looked.iter().find(|d| d.task_id == Some(envelope.id)).unwrap();
    assert_eq!(
        (letter.reason.as_deref(), letter.task.as_deref()),
        (Some("unknown task"), Some(envelope.task.as_str()))
    );
    let garbage = looked.iter().find(|d| d.task_id.is_none()).unwrap();
    let garbage_id = garbage.message_id.clone();

    let missing = dead_letters::redrive(
        pair.dead_letters.as_ref(),
        pair.queue.as_ref(),
        store,
        &Selection::Message("nope".into()),
    )
    .await;
    assert!(matches!(missing, Err(dead_letters::RedriveError::NoSuchMessage { .. })));
    let report = dead_letters::redrive(
        pair.dead_letters.as_ref(),
        pair.queue.as_ref(),
        store,
        &Selection::Message(letter.message_id.clone()),
    )
    .await
    .unwrap();
    assert_eq!(report.moved, 1);
    assert_eq!((report.messages[0].task_id, report.messages[0].fate), (Some(envelope.id), RecordFate::Reopened));
    assert_eq!(store.get(envelope.id).await.unwrap().unwrap().state, TaskState::Pending);
    let all =
        dead_letters::redrive(pair.dead_letters.as_ref(), pair.queue.as_ref(), store, &Selection::All).await.unwrap();
    assert_eq!(all.moved, 1);
    assert_eq!(
        (all.messages[0].message_id.as_str(), all.messages[0].fate),
        (garbage_id.as_str(), RecordFate::NoTaskId)
    );
    let back = receive_some(pair.queue.as_ref(), Duration::from_secs(30), Duration::from_secs(5)).await;
    let mut more = pair.queue.receive(10, Duration::from_secs(1), Duration::from_secs(30)).await.unwrap();
    more.extend(back);
    assert_eq!(more.len(), 2);
    assert!(more.iter().any(|m| m.body == envelope.to_body()));
}

#[tokio::test]
async fn embedded_dead_letters_conform() {
    let backend = Backend::embedded_on(&manifest("c"), Db::open(Path::new(":memory:")).unwrap());
    dead_letter_suite(backend.queue("default").unwrap().clone(), MoveMethod::Embedded).await;
    redrive_suite(&backend).await;
}

#[tokio::test]
async fn sqs_dead_letters_conform() {
    let sdk = emulator::sdk_config().await;
    let m = manifest(&emulator::unique_project("dlq"));
    taskbeat::provision::create_missing(&m, &aws_sdk_dynamodb::Client::new(&sdk), &aws_sdk_sqs::Client::new(&sdk))
        .await
        .unwrap();
    let backend = Backend::aws(&m, &sdk);
    // The emulator has no StartMessageMoveTask: the fallback moves them.
    dead_letter_suite(backend.queue("default").unwrap().clone(), MoveMethod::ReceiveSendDelete).await;
    redrive_suite(&backend).await;
}

/// A FIFO queue's dead letters go back in their message groups.
async fn fifo_dead_letter_suite(pair: QueuePair) {
    for (body, group) in [("a1", "A"), ("b1", "B"), ("a2", "A")] {
        let message = OutgoingMessage {
            group_id: Some(group.into()),
            deduplication_id: Some(format!("dead-{body}")),
            attributes: dead_letter_attributes("reason", "ordered"),
            ..OutgoingMessage::new(body)
        };
        pair.dead_letters.send(message).await.unwrap();
    }
    let looked = pair.dead_letters.peek(10).await.unwrap();
    assert!(looked.iter().all(|m| m.group_id.is_some()), "{looked:?}");
    let moved = pair.dead_letters.move_messages(pair.queue.as_ref(), None).await.unwrap();
    assert_eq!(moved.count, 3);
    let mut back = Vec::new();
    let started = Instant::now();
    while back.len() < 3 && started.elapsed() < Duration::from_secs(10) {
        for m in pair.queue.receive(10, Duration::from_secs(1), Duration::from_secs(30)).await.unwrap() {
            pair.queue.delete(std::slice::from_ref(&m.receipt_handle)).await.unwrap();
            back.push((m.body, m.group_id.unwrap_or_default()));
        }
    }
    let group_of = |body: &str| back.iter().find(|(b, _)| b == body).map(|(_, g)| g.clone());
    assert_eq!(
        (group_of("a1"), group_of("b1"), group_of("a2")),
        (Some("A".into()), Some("B".into()), Some("A".into()))
    );
    let a_order: Vec<&str> = back.iter().filter(|(_, g)| g == "A").map(|(b, _)| b.as_str()).collect();
    assert_eq!(a_order, vec!["a1", "a2"], "order kept within group A");
}

#[tokio::test]
async fn embedded_fifo_dead_letters_conform() {
    let m = Manifest::parse(&FIFO_MANIFEST.replace("NAME", "fifo"), "conformance").unwrap();
    let backend = Backend::embedded_on(&m, Db::open(Path::new(":memory:")).unwrap());
    fifo_dead_letter_suite(backend.queue("ordered").unwrap().clone()).await;
}

#[tokio::test]
async fn sqs_fifo_dead_letters_conform() {
    let sdk = emulator::sdk_config().await;
    let m =
        Manifest::parse(&FIFO_MANIFEST.replace("NAME", &emulator::unique_project("fifodlq")), "conformance").unwrap();
    taskbeat::provision::create_missing(&m, &aws_sdk_dynamodb::Client::new(&sdk), &aws_sdk_sqs::Client::new(&sdk))
        .await
        .unwrap();
    fifo_dead_letter_suite(Backend::aws(&m, &sdk).queue("ordered").unwrap().clone()).await;
}
