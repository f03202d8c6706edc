//! Fault injection: a corpus of malformed bodies mixed with valid tasks, and a state store that
//! fails and throttles. Nothing crashes, every valid task succeeds, nothing is lost.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use taskbeat::backend::Backend;
use taskbeat::event::sqs_event;
use taskbeat::handler::{BatchHandler, HandlerOptions};
use taskbeat::local::{LocalWorker, Phase};
use taskbeat::queue::{REASON_ATTRIBUTE, ReceivedMessage};
use taskbeat::record::TaskRecord;
use taskbeat::sqlite::Db;
use taskbeat::store::{ClaimOutcome, ClaimRequest, Completion, ListQuery, ProgressUpdate, StateStore, StoreError};
use taskbeat::testing::{TEST_QUEUE, test_manifest};
use taskbeat::{Client, Envelope, Registry, SendOptions, TaskContext, TaskState};
use tokio::time::Instant;
use uuid::Uuid;

/// A small deterministic generator, so a failing corpus can be reproduced from its seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn text(&mut self, len: usize) -> String {
        const CHARS: &[char] =
            &['a', 'Z', '0', '{', '}', '"', '\\', ':', ',', '[', ']', ' ', 'é', '处', '🚀', '\u{FFFD}', '\u{7f}', '\n'];
        (0..len).map(|_| CHARS[self.below(CHARS.len() as u64) as usize]).collect()
    }
}

/// At least `n` malformed bodies of every kind the issue lists.
fn malformed_corpus(n: usize, seed: u64) -> Vec<String> {
    let mut rng = Lcg(seed);
    let id = || Uuid::new_v4().to_string();
    let mut corpus = Vec::new();
    while corpus.len() < n {
        let body = match rng.below(12) {
            0 => {
                let len = 1 + rng.below(200) as usize;
                rng.text(len)
            }
            1 => {
                let valid = Envelope::new("t.ok", vec![json!(1)], Map::new()).to_body();
                let cut = 1 + rng.below(valid.len() as u64 - 1) as usize;
                valid.chars().take(cut).collect()
            }
            2 => format!(r#"{{"version":1,"id":{},"task":"t.ok"}}"#, rng.below(1000)),
            3 => format!(r#"{{"version":1,"id":"{}","task":["t.ok"]}}"#, id()),
            4 => format!(r#"{{"version":1,"id":"{}","task":"t.ok","args":{{"n":1}}}}"#, id()),
            5 => format!(r#"{{"version":1,"id":"{}","task":"t.ok","kwargs":"n=1"}}"#, id()),
            6 => {
                let retries = ["-1", "\"x\"", "1e100", "4294967296", "null"][rng.below(5) as usize];
                format!(r#"{{"version":1,"id":"{}","task":"t.ok","retries":{retries}}}"#, id())
            }
            7 => {
                let missing = ["version", "id", "task"][rng.below(3) as usize];
                let mut fields = BTreeMap::from([("version", json!(1)), ("id", json!(id())), ("task", json!("t.ok"))]);
                fields.remove(missing);
                serde_json::to_string(&fields).unwrap()
            }
            8 => {
                // Huge strings, still under the queue's 256 KiB.
                let huge = "x".repeat(100_000 + rng.below(100_000) as usize);
                if rng.below(2) == 0 {
                    format!(r#"{{"version":1,"id":"{}","task":"{huge}"}}"#, id())
                } else {
                    format!(r#"{{"version":1,"id":"{}","task":"t.nope","args":["{huge}"]}}"#, id())
                }
            }
            9 => {
                let depth = 200 + rng.below(20_000) as usize;
                format!(
                    r#"{{"version":1,"id":"{}","task":"t.ok","args":{}{}}}"#,
                    id(),
                    "[".repeat(depth),
                    "]".repeat(depth)
                )
            }
            10 => {
                // What invalid bytes look like once SQS carries the text: lone surrogate escapes,
                // replacement characters where a field's quotes were.
                let forms = [
                    format!(r#"{{"version":1,"id":"{}","task":"t.\udc00ok"}}"#, id()),
                    format!(r#"{{"version":1,"id":"{}","task":"t.ok\ud800"}}"#, id()),
                    format!("{{\u{FFFD}version\u{FFFD}:1,\"id\":\"{}\",\"task\":\"t.ok\"}}", id()),
                    format!(r#"{{"version":1,"id":"{}\u0000","task":"t.ok"}}"#, id()),
                ];
                forms[rng.below(forms.len() as u64) as usize].clone()
            }
            _ => format!(r#"{{"version":1,"id":"{}","task":"app.schedules.unknown_{}"}}"#, id(), rng.below(100)),
        };
        corpus.push(body);
    }
    corpus
}

fn registry(runs: Arc<AtomicUsize>) -> Registry {
    Registry::new("test").task("t.ok", &["n"], move |ctx: TaskContext, a: Map<String, Value>| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            ctx.progress(50, "half").await;
            Ok(a["n"].clone())
        }
    })
}

fn message(i: usize, body: String) -> ReceivedMessage {
    ReceivedMessage {
        message_id: format!("m{i}"),
        receipt_handle: format!("r{i}"),
        body,
        receive_count: 1,
        sent_at: chrono::Utc::now(),
        first_received_at: None,
        attributes: Default::default(),
        group_id: None,
    }
}

#[tokio::test]
async fn a_thousand_malformed_bodies_among_valid_tasks() {
    let corpus = malformed_corpus(1_200, 7);
    let manifest = test_manifest("test");
    let backend = Backend::embedded_on(&manifest, Db::open(Path::new(":memory:")).unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    let pair = backend.queue(TEST_QUEUE).unwrap().clone();
    let handler = BatchHandler::new(
        Arc::new(registry(runs.clone())),
        backend.store.clone(),
        pair.dead_letters.clone(),
        TEST_QUEUE,
        HandlerOptions::default(),
    );
    let mut valid = Vec::new();
    let mut next = 0;
    let mut bad = corpus.iter();
    loop {
        // Batches of 10: 7 malformed, 3 valid.
        let mut batch = Vec::new();
        for _ in 0..7 {
            if let Some(body) = bad.next() {
                batch.push(message(next, body.clone()));
                next += 1;
            }
        }
        if batch.is_empty() {
            break;
        }
        for _ in 0..3 {
            let envelope = Envelope::new("t.ok", vec![json!(next)], Map::new());
            valid.push(envelope.id);
            batch.push(message(next, envelope.to_body()));
            next += 1;
        }
        let response = handler.handle(sqs_event("arn", "local", &batch), None).await;
        assert!(response.batch_item_failures.is_empty(), "nothing handed back: {:?}", response.batch_item_failures);
    }
    for id in &valid {
        assert_eq!(backend.store.get(*id).await.unwrap().unwrap().state, TaskState::Success);
    }
    assert_eq!(runs.load(Ordering::SeqCst), valid.len());
    let mut dead = 0;
    loop {
        let got = pair.dead_letters.receive(10, Duration::ZERO, Duration::from_secs(600)).await.unwrap();
        if got.is_empty() {
            break;
        }
        for m in &got {
            assert!(!m.attributes[REASON_ATTRIBUTE].is_empty());
            assert!(corpus.contains(&m.body), "dead letter body kept as sent");
        }
        dead += got.len();
    }
    assert_eq!(dead, corpus.len(), "every malformed body is in the DLQ");
    println!(
        "malformed corpus: {} bodies, {} valid tasks: 0 crashes, {} dead letters, {} valid succeeded",
        corpus.len(),
        valid.len(),
        dead,
        valid.len()
    );
}

/// A store that fails or throttles a share of calls (deterministically).
#[derive(Debug)]
struct FaultyStore {
    inner: Arc<dyn StateStore>,
    every: u64,
    calls: AtomicU64,
    injected: AtomicU64,
    log: Mutex<Vec<&'static str>>,
}

impl FaultyStore {
    fn fault(&self, op: &'static str) -> Result<(), StoreError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n % self.every == self.every - 1 {
            self.injected.fetch_add(1, Ordering::SeqCst);
            self.log.lock().unwrap().push(op);
            return Err(if n.is_multiple_of(2) {
                StoreError::Throttled(format!("injected throttling in {op}"))
            } else {
                StoreError::Backend(format!("injected failure in {op}"))
            });
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for FaultyStore {
    async fn create(&self, record: &TaskRecord) -> Result<(), StoreError> {
        self.inner.create(record).await
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        self.fault("claim")?;
        self.inner.claim(request).await
    }
    async fn progress(&self, id: Uuid, update: &ProgressUpdate) -> Result<(), StoreError> {
        self.fault("progress")?;
        self.inner.progress(id, update).await
    }
    async fn complete(&self, completion: &Completion) -> Result<(), StoreError> {
        self.fault("complete")?;
        self.inner.complete(completion).await
    }
    async fn get(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
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
async fn a_failing_store_loses_nothing() {
    let manifest = test_manifest("test");
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::embedded_on(&manifest, Db::open(&dir.path().join("f.db")).unwrap());
    let faulty = Arc::new(FaultyStore {
        inner: backend.store.clone(),
        every: 7,
        calls: AtomicU64::new(0),
        injected: AtomicU64::new(0),
        log: Mutex::new(Vec::new()),
    });
    let runs = Arc::new(AtomicUsize::new(0));
    let pair = backend.queue(TEST_QUEUE).unwrap().clone();
    let options = HandlerOptions {
        default_time_limit: Duration::from_millis(500),
        safety_margin: Duration::from_millis(100),
        ..HandlerOptions::default()
    };
    let handler = BatchHandler::new(
        Arc::new(registry(runs.clone())),
        faulty.clone(),
        pair.dead_letters.clone(),
        TEST_QUEUE,
        options,
    );
    let worker = LocalWorker {
        module: "test".into(),
        queue: pair.queue.clone(),
        handler,
        batch_size: 10,
        concurrency: 2,
        timeout: Duration::from_secs(5),
        visibility_timeout: Duration::from_secs(1),
        arn: LocalWorker::local_arn(TEST_QUEUE),
    };
    let client = Client::new(Arc::new(manifest), backend.clone(), "faults");
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(client.send("t.ok", vec![json!(n)], Map::new(), SendOptions::default()).await.unwrap());
    }
    let (phase, rx) = tokio::sync::watch::channel(Phase::Running);
    let runtime = tokio::spawn(taskbeat::local::run(vec![worker], rx));
    let started = Instant::now();
    loop {
        let mut done = 0;
        for id in &ids {
            if backend.store.get(*id).await.unwrap().is_some_and(|r| r.state.is_terminal()) {
                done += 1;
            }
        }
        if done == ids.len() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{done} of {} finished", ids.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    phase.send(Phase::Draining).unwrap();
    runtime.await.unwrap();
    for id in &ids {
        let record = backend.store.get(*id).await.unwrap().unwrap();
        assert_eq!(record.state, TaskState::Success, "{record:?}");
    }
    let depth = pair.queue.depth().await.unwrap();
    assert_eq!(depth.visible + depth.in_flight, 0, "every message acknowledged");
    let injected = faulty.injected.load(Ordering::SeqCst);
    assert!(injected > 20, "faults were injected: {injected}");
    let reruns = runs.load(Ordering::SeqCst) - ids.len();
    let completes = faulty.log.lock().unwrap().iter().filter(|op| **op == "complete").count();
    // A body runs again only when its result could not be recorded.
    assert!(reruns <= completes, "{reruns} re-runs, {completes} failed completions");
    println!(
        "failing store: {} tasks, {injected} faults injected ({} store calls), 0 lost, 0 stuck, {reruns} re-runs (<= {completes} failed completions)",
        ids.len(),
        faulty.calls.load(Ordering::SeqCst)
    );
}
