//! A backend: the state store plus every queue (and its DLQ) of the manifest, either embedded
//! (one SQLite file) or on AWS (DynamoDB and SQS). The CLI, the local runtime and the producer
//! client all get their stores and queues here.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aws_config::SdkConfig;

use crate::celery::results::{CeleryResultStore, CeleryResultWriter};
use crate::manifest::{Manifest, embedded_dlq_name};
use crate::queue::TaskQueue;
use crate::queue::sqlite::{Redrive, SqliteQueue};
use crate::queue::sqs::SqsQueue;
use crate::sqlite::{Db, DbError};
use crate::store::StateStore;
use crate::store::dynamodb::DynamoStore;
use crate::store::sqlite::SqliteStore;

/// The embedded database's file name inside the data folder.
pub const DB_FILE: &str = "taskbeat.db";

/// A queue and the dead-letter queue behind it.
#[derive(Debug, Clone)]
pub struct QueuePair {
    /// The queue.
    pub queue: Arc<dyn TaskQueue>,
    /// Its dead-letter queue.
    pub dead_letters: Arc<dyn TaskQueue>,
}

/// A state store and the manifest's queues.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where records live.
    pub store: Arc<dyn StateStore>,
    /// Queues by manifest queue name.
    pub queues: BTreeMap<String, QueuePair>,
    /// Where the data lives, for people.
    pub location: String,
}

impl Backend {
    /// The embedded backend: one SQLite file under `data_dir`.
    pub fn embedded(manifest: &Manifest, data_dir: &Path) -> Result<Backend, DbError> {
        Ok(Backend::embedded_on(manifest, Db::open(&data_dir.join(DB_FILE))?))
    }

    /// The embedded backend on an open database (`:memory:` for tests).
    pub fn embedded_on(manifest: &Manifest, db: Db) -> Backend {
        let mut queues = BTreeMap::new();
        for name in manifest.queue_names() {
            let settings = manifest.queue_settings(name);
            let dlq_name = embedded_dlq_name(name);
            let redrive =
                Redrive { dead_letter_queue: dlq_name.clone(), max_receive_count: settings.max_receive_count };
            let queue: Arc<dyn TaskQueue> =
                Arc::new(SqliteQueue::new(db.clone(), name, Some(redrive)).fifo(settings.fifo));
            let dead_letters: Arc<dyn TaskQueue> =
                Arc::new(SqliteQueue::new(db.clone(), dlq_name, None).fifo(settings.fifo));
            queues.insert(name.to_owned(), QueuePair { queue, dead_letters });
        }
        let location = db.path().display().to_string();
        Backend { store: Arc::new(SqliteStore::new(db)), queues, location }
    }

    /// The AWS backend: the manifest's DynamoDB table and SQS queues, through `sdk`.
    pub fn aws(manifest: &Manifest, sdk: &SdkConfig) -> Backend {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let queues = manifest
            .queue_names()
            .into_iter()
            .map(|name| {
                let queue: Arc<dyn TaskQueue> = Arc::new(SqsQueue::new(sqs.clone(), manifest.sqs_queue_name(name)));
                let dead_letters: Arc<dyn TaskQueue> =
                    Arc::new(SqsQueue::new(sqs.clone(), manifest.sqs_dlq_name(name)));
                (name.to_owned(), QueuePair { queue, dead_letters })
            })
            .collect();
        let table = manifest.table_name();
        let endpoint = sdk.endpoint_url().map(|e| format!(" at {e}")).unwrap_or_default();
        let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "(no region)".into());
        let store: Arc<dyn StateStore> = Arc::new(DynamoStore::new(dynamodb.clone(), &table));
        Backend {
            store: with_celery_results(manifest, store, &dynamodb),
            queues,
            location: format!(
                "DynamoDB table {table} and SQS queues {} (and their DLQs) in {region}{endpoint}",
                manifest.queue_names().into_iter().map(|q| manifest.sqs_queue_name(q)).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    /// A queue by manifest name.
    pub fn queue(&self, name: &str) -> Option<&QueuePair> {
        self.queues.get(name)
    }
}

/// The store, also writing Celery's result items when the manifest says `[celery] results = true`.
pub fn with_celery_results(
    manifest: &Manifest,
    store: Arc<dyn StateStore>,
    dynamodb: &aws_sdk_dynamodb::Client,
) -> Arc<dyn StateStore> {
    match manifest.celery_results() {
        Some(config) => Arc::new(CeleryResultStore::new(store, CeleryResultWriter::new(dynamodb.clone(), config))),
        None => store,
    }
}

/// Loads the shared AWS configuration once: region, credentials and `AWS_ENDPOINT_URL` from the
/// standard environment.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
