//! A harness that runs one task end to end in memory (embedded store, the real batch handler)
//! and returns what happened, so function crates test their tasks without infrastructure.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use std::sync::Arc;
use uuid::Uuid;

use aws_lambda_events::event::sqs::SqsBatchResponse;
use chrono::Utc;
use serde_json::{Map, Value};

use crate::backend::Backend;
use crate::client::Client;
use crate::context::{ContextParts, TaskContext};
use crate::envelope::Envelope;
use crate::event::sqs_event;
use crate::handler::{BatchHandler, HandlerOptions};
use crate::manifest::Manifest;
use crate::queue::{ReceivedMessage, TaskQueue};
use crate::record::TaskRecord;
use crate::registry::Registry;
use crate::registry::TaskError;
use crate::sqlite::Db;
use crate::store::StateStore;
use crate::store::{ClaimOutcome, ClaimRequest, Completion, ListQuery, ProgressUpdate, StoreError};

/// What one run produced.
#[derive(Debug, Clone)]
pub struct Run {
    /// The task's record after the run.
    pub record: TaskRecord,
    /// The batch response (a retry shows up as a failure here).
    pub response: SqsBatchResponse,
    /// Messages that went to the dead-letter queue.
    pub dead_letters: Vec<String>,
}

/// Runs `task` once through the batch handler on an in-memory store.
pub async fn run_task(registry: Registry, task: &str, args: Vec<Value>, kwargs: Map<String, Value>) -> Run {
    let envelope = Envelope::new(task, args, kwargs);
    let id = envelope.id;
    let (response, store, dlq) = run_bodies(registry, &[envelope.to_body()]).await;
    let record = match store.get(id).await {
        Ok(Some(record)) => record,
        other => panic!("task {id} left no record: {other:?}"),
    };
    let dead_letters = drain(&dlq).await;
    Run { record, response, dead_letters }
}

/// Runs raw message bodies as one batch; returns the response, the store and the DLQ.
pub async fn run_bodies(
    registry: Registry,
    bodies: &[String],
) -> (SqsBatchResponse, Arc<dyn StateStore>, Arc<dyn TaskQueue>) {
    let db = match Db::open(Path::new(":memory:")) {
        Ok(db) => db,
        Err(e) => panic!("in-memory database: {e}"),
    };
    let manifest = test_manifest(registry.module());
    let backend = Backend::embedded_on(&manifest, db);
    let store = backend.store.clone();
    let dlq = backend.queue(TEST_QUEUE).map(|pair| pair.dead_letters.clone()).expect("the test queue");
    let client = Client::new(Arc::new(manifest), backend, "test");
    let handler =
        BatchHandler::new(Arc::new(registry), store.clone(), dlq.clone(), TEST_QUEUE, HandlerOptions::default())
            .with_client(client);
    let messages: Vec<ReceivedMessage> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| ReceivedMessage {
            message_id: format!("m{i}"),
            receipt_handle: format!("r{i}"),
            body: body.clone(),
            receive_count: 1,
            sent_at: Utc::now(),
            first_received_at: None,
            attributes: Default::default(),
            group_id: None,
        })
        .collect();
    let event = sqs_event("arn:aws:sqs:local:000000000000:test", "local", &messages);
    let response = handler.handle(event, None).await;
    (response, store, dlq)
}

/// The queue of the test manifest.
pub const TEST_QUEUE: &str = "test";

/// A manifest with one module (the registry's) consuming [`TEST_QUEUE`]; child tasks sent by
/// the task under test land there too.
pub fn test_manifest(module: &str) -> Manifest {
    let module = if module.is_empty() { "test" } else { module };
    let text = format!(
        "[project]\nname = \"test\"\ndefault_queue = \"{TEST_QUEUE}\"\n[modules.{module}]\ncrate = \"{module}\"\nqueue = \"{TEST_QUEUE}\"\n"
    );
    Manifest::parse(&text, "test manifest").expect("the test manifest is valid")
}

async fn drain(queue: &Arc<dyn TaskQueue>) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Ok(batch) = queue.receive(10, std::time::Duration::ZERO, std::time::Duration::from_secs(60)).await {
        if batch.is_empty() {
            break;
        }
        bodies.extend(batch.into_iter().map(|m| m.body));
    }
    bodies
}

/// A store that keeps progress reports only (all a directly called task writes).
#[derive(Debug, Default)]
pub struct ProgressLog {
    /// Every report, in order.
    pub updates: Mutex<Vec<ProgressUpdate>>,
}

impl ProgressLog {
    /// The status texts, in order.
    pub fn statuses(&self) -> Vec<String> {
        self.updates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(|u| u.status.clone())
            .collect()
    }

    /// The percentages, in order.
    pub fn percents(&self) -> Vec<u8> {
        self.updates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(|u| u.progress)
            .collect()
    }
}

fn unused() -> StoreError {
    StoreError::Backend("not used by a directly called task".into())
}

#[async_trait]
impl StateStore for ProgressLog {
    async fn create(&self, _: &TaskRecord) -> Result<(), StoreError> {
        Err(unused())
    }
    async fn claim(&self, _: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        Err(unused())
    }
    async fn progress(&self, _: Uuid, update: &ProgressUpdate) -> Result<(), StoreError> {
        self.updates.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(update.clone());
        Ok(())
    }
    async fn complete(&self, _: &Completion) -> Result<(), StoreError> {
        Err(unused())
    }
    async fn get(&self, _: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        Err(unused())
    }
    async fn list(&self, _: &ListQuery) -> Result<Vec<TaskRecord>, StoreError> {
        Err(unused())
    }
    async fn acquire_marker(&self, _: &str, _: Duration) -> Result<bool, StoreError> {
        Err(unused())
    }
}

/// Calls a task's body directly (no batch handler, no coalescing), with every progress report
/// kept, so tests can see them all.
pub async fn call_task(
    registry: &Registry,
    task: &str,
    args: Vec<Value>,
) -> (Result<Value, TaskError>, Arc<ProgressLog>) {
    let log = Arc::new(ProgressLog::default());
    let parts = ContextParts {
        id: Uuid::new_v4(),
        name: task.to_owned(),
        retries: 0,
        parent_id: None,
        root_id: None,
        deadline: None,
        progress_interval: Duration::ZERO,
    };
    let ctx = TaskContext::new(parts, log.clone(), None);
    let Some(spec) = registry.get(task) else {
        return (Err(TaskError::permanent("UnknownTask", format!("no task {task} in the registry"))), log);
    };
    let result = spec.call(ctx, args, Map::new()).await;
    (result, log)
}
