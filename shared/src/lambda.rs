//! The Lambda entry point: `taskbeat::lambda::run(registry)` is a function's whole `main`.
//!
//! Configuration comes from the environment once per cold start; one `SdkConfig` serves every
//! client; then each invocation is one call of the batch handler.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{LambdaEvent, service_fn};
use tokio::time::Instant;

use crate::backend::{Backend, load_sdk_config};
use crate::client::Client;
use crate::handler::{BatchHandler, HandlerOptions};
use crate::manifest::Manifest;
use crate::queue::TaskQueue;
use crate::queue::sqs::SqsQueue;
use crate::registry::Registry;
use crate::store::StateStore;
use crate::store::dynamodb::DynamoStore;

/// The error type of a function's `main`.
pub use lambda_runtime::Error;

/// The environment variable naming the task table.
pub const ENV_TABLE: &str = "TASKBEAT_TABLE";
/// The environment variable with the DLQ's URL.
pub const ENV_DLQ_URL: &str = "TASKBEAT_DLQ_URL";
/// The environment variable with the module's queue name.
pub const ENV_QUEUE: &str = "TASKBEAT_QUEUE";
/// Optional: records of a batch running at once.
pub const ENV_CONCURRENCY: &str = "TASKBEAT_CONCURRENCY";
/// Optional: default time limit of a task run, seconds.
pub const ENV_TIME_LIMIT: &str = "TASKBEAT_TIME_LIMIT";

/// A setting that is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("environment variable {0} is not set: {1}")]
    Missing(&'static str, &'static str),
    /// A variable does not parse.
    #[error("environment variable {name} = {value:?} is not valid: {expected}")]
    Invalid {
        /// Variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
}

/// What a function reads from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaConfig {
    /// DynamoDB table of task records.
    pub table: String,
    /// URL of the dead-letter queue.
    pub dlq_url: String,
    /// The module's queue name (for records).
    pub queue: String,
    /// How the handler runs.
    pub options: HandlerOptions,
}

impl LambdaConfig {
    /// Reads the configuration through `var` (the process environment in Lambda).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str, what: &'static str| {
            var(name).filter(|v| !v.trim().is_empty()).ok_or(ConfigError::Missing(name, what))
        };
        let number = |name: &'static str, expected: &'static str| -> Result<Option<u64>, ConfigError> {
            var(name)
                .map(|v| {
                    v.trim().parse::<u64>().ok().filter(|n| *n > 0).ok_or(ConfigError::Invalid {
                        name,
                        value: v,
                        expected,
                    })
                })
                .transpose()
        };
        let table = required(ENV_TABLE, "the DynamoDB table of task records (set by the template)")?;
        let dlq_url = required(ENV_DLQ_URL, "the URL of the module's dead-letter queue (set by the template)")?;
        let queue = required(ENV_QUEUE, "the module's queue name (set by the template)")?;
        let mut options = HandlerOptions::default();
        if let Some(n) = number(ENV_CONCURRENCY, "a positive whole number")? {
            options.concurrency = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = number(ENV_TIME_LIMIT, "a positive number of seconds")? {
            options.default_time_limit = Duration::from_secs(n);
        }
        Ok(LambdaConfig { table, dlq_url, queue, options })
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

/// Sets up JSON logs for Lambda (level from `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`, default info).
pub fn init_tracing() {
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned())
        .to_lowercase();
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_current_span(true)
        .with_span_list(true)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

/// Runs a function: configuration, clients (once per cold start), then the Lambda runtime.
/// `manifest` is the text of `taskbeat.toml` compiled into the binary (`include_str!`): it
/// routes child tasks and names the other queues.
pub async fn run(registry: Registry, manifest: &str) -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let config = LambdaConfig::from_env().inspect_err(|e| tracing::error!(error = %e, "configuration"))?;
    let manifest = Manifest::parse(manifest, "taskbeat.toml (compiled in)")
        .inspect_err(|e| tracing::error!(error = %e, "manifest"))?;
    let sdk = load_sdk_config().await;
    let mut backend = Backend::aws(&manifest, &sdk);
    // The table and the DLQ come from the deployment; the other queues from the manifest.
    backend.store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), &config.table));
    let dead_letters: Arc<dyn TaskQueue> =
        Arc::new(SqsQueue::from_url(aws_sdk_sqs::Client::new(&sdk), &config.dlq_url));
    let origin = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| registry.module().to_owned());
    let store: Arc<dyn StateStore> = backend.store.clone();
    let client = Client::new(Arc::new(manifest), backend, origin);
    let handler =
        BatchHandler::new(Arc::new(registry), store, dead_letters, &config.queue, config.options).with_client(client);
    tracing::info!(module = handler.registry().module(), queue = %config.queue, "function ready");
    let handler = &handler;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let deadline = deadline_instant(event.context.deadline);
        Ok::<SqsBatchResponse, lambda_runtime::Error>(handler.handle(event.payload, Some(deadline)).await)
    }))
    .await
}

/// Lambda's deadline (epoch milliseconds) as an `Instant`.
pub fn deadline_instant(deadline_ms: u64) -> Instant {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
    Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_settings_are_named() {
        let err = LambdaConfig::from_lookup(|_| None).unwrap_err();
        assert!(err.to_string().contains(ENV_TABLE), "{err}");
        let err = LambdaConfig::from_lookup(|n| (n != ENV_DLQ_URL).then(|| "x".to_owned())).unwrap_err();
        assert!(err.to_string().contains(ENV_DLQ_URL), "{err}");
        let err = LambdaConfig::from_lookup(|n| Some(if n == ENV_CONCURRENCY { "lots".into() } else { "x".into() }))
            .unwrap_err();
        assert!(err.to_string().contains(ENV_CONCURRENCY) && err.to_string().contains("lots"), "{err}");
    }
}
