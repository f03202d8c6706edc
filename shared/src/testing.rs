//! A harness that runs one task end to end in memory (embedded store, the real batch handler)
//! and returns what happened, so function crates test their tasks without infrastructure.

use std::path::Path;
use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsBatchResponse;
use chrono::Utc;
use serde_json::{Map, Value};

use crate::envelope::Envelope;
use crate::event::sqs_event;
use crate::handler::{BatchHandler, HandlerOptions};
use crate::queue::sqlite::SqliteQueue;
use crate::queue::{ReceivedMessage, TaskQueue};
use crate::record::TaskRecord;
use crate::registry::Registry;
use crate::sqlite::Db;
use crate::store::StateStore;
use crate::store::sqlite::SqliteStore;

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
    let store: Arc<dyn StateStore> = Arc::new(SqliteStore::new(db.clone()));
    let dlq: Arc<dyn TaskQueue> = Arc::new(SqliteQueue::new(db, "test-dlq", None));
    let handler = BatchHandler::new(Arc::new(registry), store.clone(), dlq.clone(), "test", HandlerOptions::default());
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
        })
        .collect();
    let event = sqs_event("arn:aws:sqs:local:000000000000:test", "local", &messages);
    let response = handler.handle(event, None).await;
    (response, store, dlq)
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
