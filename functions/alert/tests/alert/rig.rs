//! A batch handler for the `alerts` queue on an in-memory backend with every queue of the real
//! manifest, so tests can plant messages, run envelopes and read back the child tasks sent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use chrono::Utc;
use serde_json::{Map, Value};
use taskbeat::backend::Backend;
use taskbeat::context::ContextParts;
use taskbeat::handler::{BatchHandler, HandlerOptions};
use taskbeat::manifest::Manifest;
use taskbeat::record::TaskRecord;
use taskbeat::sqlite::Db;
use taskbeat::{Client, Envelope, Registry, TaskContext, TaskError};
use uuid::Uuid;

/// The module's queue in the manifest.
pub const QUEUE: &str = "alerts";

pub struct Rig {
    pub backend: Backend,
    pub client: Client,
    handler: BatchHandler,
}

impl Rig {
    pub fn new(registry: Registry) -> Rig {
        Rig::with_options(registry, HandlerOptions::default())
    }

    pub fn with_options(registry: Registry, options: HandlerOptions) -> Rig {
        let manifest = Manifest::parse(include_str!("../../../../taskbeat.toml"), "taskbeat.toml").unwrap();
        let backend = Backend::embedded_on(&manifest, Db::open(Path::new(":memory:")).unwrap());
        let dead_letters = backend.queue(QUEUE).unwrap().dead_letters.clone();
        let client = Client::new(Arc::new(manifest), backend.clone(), "alert-tests");
        let handler = BatchHandler::new(Arc::new(registry), backend.store.clone(), dead_letters, QUEUE, options)
            .with_client(client.clone());
        Rig { backend, client, handler }
    }

    /// Delivers `envelope` once through the batch handler; returns its record afterwards.
    pub async fn run(&self, envelope: &Envelope) -> TaskRecord {
        // The event as Lambda's SQS trigger delivers it.
        let mut message = SqsMessage::default();
        message.message_id = Some(Uuid::new_v4().to_string());
        message.receipt_handle = Some(Uuid::new_v4().to_string());
        message.body = Some(envelope.to_body());
        message.attributes = HashMap::from([
            ("ApproximateReceiveCount".to_owned(), "1".to_owned()),
            ("SentTimestamp".to_owned(), Utc::now().timestamp_millis().to_string()),
        ]);
        message.event_source = Some("aws:sqs".to_owned());
        message.event_source_arn = Some("arn:aws:sqs:local:000000000000:taskbeat-alerts".to_owned());
        let mut event = SqsEvent::default();
        event.records = vec![message];
        self.handler.handle(event, None).await;
        self.record(envelope.id).await
    }

    pub async fn record(&self, id: Uuid) -> TaskRecord {
        self.backend.store.get(id).await.unwrap().unwrap_or_else(|| panic!("task {id} has no record"))
    }

    /// Calls a task's body directly, as a fresh task, to see the error it returns (with its
    /// retry wait) before the runtime records it.
    pub async fn call(&self, task: &str, kwargs: Value) -> Result<Value, TaskError> {
        let parts = ContextParts {
            id: Uuid::new_v4(),
            name: task.to_owned(),
            retries: 0,
            parent_id: None,
            root_id: None,
            deadline: None,
            progress_interval: Duration::from_millis(500),
        };
        let ctx = TaskContext::new(parts, self.backend.store.clone(), Some(self.client.clone()));
        self.handler.registry().get(task).unwrap().call(ctx, Vec::new(), kwargs_of(kwargs)).await
    }

    /// Takes every message waiting on `queue` (hidden for a minute afterwards), as envelopes.
    pub async fn take_queued(&self, queue: &str) -> Vec<Envelope> {
        let queue = &self.backend.queue(queue).unwrap().queue;
        let mut taken = Vec::new();
        loop {
            let batch = queue.receive(10, Duration::ZERO, Duration::from_secs(60)).await.unwrap();
            if batch.is_empty() {
                return taken;
            }
            taken.extend(batch.iter().map(|m| Envelope::parse(&m.body).unwrap()));
        }
    }
}

/// A task call with keyword arguments only.
pub fn envelope(task: &str, kwargs: Value) -> Envelope {
    Envelope::new(task, Vec::new(), kwargs_of(kwargs))
}

fn kwargs_of(kwargs: Value) -> Map<String, Value> {
    kwargs.as_object().cloned().unwrap_or_else(|| panic!("kwargs must be an object: {kwargs}"))
}

/// Log lines written while the guard lives, on this thread (tests run on a current-thread
/// runtime, so the handler's and the tasks' logs land here).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.0.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
