//! The Lambda entry point: `taskbeat::lambda::run(registry)` is a function's whole `main`.
//!
//! Configuration comes from the environment once per cold start; one `SdkConfig` serves every
//! client; then each invocation is one call of the batch handler.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::{SecondsFormat, Utc};
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::backend::{Backend, load_sdk_config};
use crate::client::Client;
use crate::handler::{BatchHandler, HandlerOptions};
use crate::manifest::Manifest;
use crate::metrics::MetricsSink;
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
/// Optional: the table of Celery results (with `[celery] results = true` in the manifest; the
/// manifest's table name otherwise).
pub const ENV_CELERY_RESULTS_TABLE: &str = "TASKBEAT_CELERY_RESULTS_TABLE";

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
    /// The Celery result table, when the deployment names it (`[celery] results = true`).
    pub celery_results_table: Option<String>,
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
        let celery_results_table = var(ENV_CELERY_RESULTS_TABLE).filter(|v| !v.trim().is_empty());
        Ok(LambdaConfig { table, dlq_url, queue, options, celery_results_table })
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

/// Sets up JSON logs for Lambda (level from `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`, default info):
/// one flat JSON object per line, see [`FlatJson`].
pub fn init_tracing() {
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned())
        .to_lowercase();
    let _ = tracing_subscriber::fmt()
        .fmt_fields(JsonFields::new())
        .event_format(FlatJson)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .try_init();
}

/// Formats an event as one flat JSON object, so CloudWatch Logs Insights can filter and group
/// on every field without paths: `timestamp`, `level`, `message`, then the fields of the spans
/// the event is in (the Lambda runtime's invoke span gives `request_id`, the handler's record
/// span `message_id`, `task_id` and `task`), then the event's own fields (`transition`,
/// `duration_ms`, `error`, ...). Where names repeat, the inner one wins.
///
/// Spans' fields must be recorded as JSON ([`JsonFields`], as [`init_tracing`] sets up).
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(recorded) = extensions.get::<FormattedFields<JsonFields>>() else { continue };
                // A span without fields is recorded as an empty string.
                if let Ok(Value::Object(span_fields)) = serde_json::from_str::<Value>(recorded) {
                    for (name, value) in span_fields {
                        fields.insert(flat_name(&name).to_owned(), value);
                    }
                }
            }
        }
        event.record(&mut JsonVisit(&mut fields));
        let message = fields.remove("message").unwrap_or(Value::Null);
        let head = [
            ("timestamp", Value::String(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true))),
            ("level", Value::String(event.metadata().level().as_str().to_owned())),
            ("message", message),
        ];
        let mut line = String::with_capacity(256);
        line.push('{');
        for (name, value) in head.iter().map(|(n, v)| (*n, v)).chain(fields.iter().map(|(n, v)| (n.as_str(), v))) {
            if line.len() > 1 {
                line.push(',');
            }
            line.push_str(&serde_json::to_string(name).map_err(|_| fmt::Error)?);
            line.push(':');
            line.push_str(&serde_json::to_string(value).map_err(|_| fmt::Error)?);
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// The lambda runtime's span fields in the snake case of the others.
fn flat_name(name: &str) -> &str {
    match name {
        "requestId" => "request_id",
        "xrayTraceId" => "xray_trace_id",
        "tenantId" => "tenant_id",
        other => other,
    }
}

/// Records an event's fields as JSON values.
struct JsonVisit<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisit<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().to_owned(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}").into());
    }
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
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let mut manifest = manifest;
    if let (Some(celery), Some(table)) = (manifest.celery.as_mut(), config.celery_results_table.clone()) {
        celery.results_table = Some(table);
    }
    backend.store = crate::backend::with_celery_results(
        &manifest,
        Arc::new(DynamoStore::new(dynamodb.clone(), &config.table)),
        &dynamodb,
    );
    let dead_letters: Arc<dyn TaskQueue> =
        Arc::new(SqsQueue::from_url(aws_sdk_sqs::Client::new(&sdk), &config.dlq_url));
    let origin = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| registry.module().to_owned());
    let store: Arc<dyn StateStore> = backend.store.clone();
    let client = Client::new(Arc::new(manifest), backend, origin);
    let handler = BatchHandler::new(Arc::new(registry), store, dead_letters, &config.queue, config.options)
        .with_client(client)
        .with_metrics(MetricsSink::stdout());
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

    #[test]
    fn the_celery_result_table_is_optional() {
        let base = |n: &str| matches!(n, ENV_TABLE | ENV_DLQ_URL | ENV_QUEUE).then(|| "x".to_owned());
        assert_eq!(LambdaConfig::from_lookup(base).unwrap().celery_results_table, None);
        let with = |n: &str| if n == ENV_CELERY_RESULTS_TABLE { Some("app-results".to_owned()) } else { base(n) };
        assert_eq!(LambdaConfig::from_lookup(with).unwrap().celery_results_table.as_deref(), Some("app-results"));
    }

    mod logs {
        use std::io;
        use std::path::Path;
        use std::sync::Mutex;

        use serde::Deserialize;
        use serde_json::json;
        use tracing::{Instrument, info_span};

        use crate::envelope::Envelope;
        use crate::event::sqs_event;
        use crate::handler::{BatchHandler, HandlerOptions};
        use crate::queue::ReceivedMessage;
        use crate::queue::sqlite::SqliteQueue;
        use crate::registry::{Registry, TaskError};
        use crate::sqlite::Db;
        use crate::store::sqlite::SqliteStore;
        use crate::{TaskContext, TaskState};

        use super::super::*;

        /// The log lines written while the guard lives, through the Lambda log format.
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);

        impl io::Write for Capture {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }

        impl Capture {
            fn install(&self) -> tracing::subscriber::DefaultGuard {
                let writer = self.clone();
                let subscriber = tracing_subscriber::fmt()
                    .fmt_fields(JsonFields::new())
                    .event_format(FlatJson)
                    .with_max_level(tracing::Level::DEBUG)
                    .with_writer(move || writer.clone())
                    .finish();
                tracing::subscriber::set_default(subscriber)
            }

            fn text(&self) -> String {
                String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
            }

            fn lines(&self) -> Vec<Value> {
                self.text()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
                    .collect()
            }
        }

        #[test]
        fn span_fields_are_flattened_and_the_inner_value_wins() {
            let capture = Capture::default();
            let _guard = capture.install();
            tracing::info!(count = 3_u64, "outside any span");
            let outer = info_span!("Lambda runtime invoke", requestId = "req-9", task = "outer");
            outer.in_scope(|| {
                // A span's parent is the span current where it is created, as in the handler.
                let inner = info_span!("record", message_id = "m-1", task = tracing::field::Empty);
                inner.record("task", "inner");
                inner.in_scope(|| tracing::warn!(ok = true, ratio = 0.5, "inside"));
            });
            let lines = capture.lines();
            assert_eq!(
                lines[0],
                json!({"timestamp": lines[0]["timestamp"], "level": "INFO", "message": "outside any span", "count": 3})
            );
            let inside = &lines[1];
            assert_eq!(inside["level"], "WARN");
            assert_eq!(inside["message"], "inside");
            assert_eq!(inside["request_id"], "req-9");
            assert_eq!(inside["message_id"], "m-1");
            assert_eq!(inside["task"], "inner");
            assert_eq!((inside["ok"].as_bool(), inside["ratio"].as_f64()), (Some(true), Some(0.5)));
            assert!(inside.get("requestId").is_none() && inside.get("spans").is_none(), "{inside}");
            assert!(capture.text().starts_with("{\"timestamp\":"), "{}", capture.text());
        }

        #[derive(Debug, Deserialize)]
        struct Login {
            user: String,
            api_key: String,
        }

        const PLANTED_USER: &str = "planted-user-7d1e";
        const PLANTED_KEY: &str = "sk-planted-secret-40c9";

        fn registry() -> Registry {
            Registry::new("auth")
                .task("t.login", &["user", "api_key"], |_ctx: TaskContext, a: Login| async move {
                    Ok(json!({ "session": format!("{}:{}", a.user, a.api_key) }))
                })
                .task("t.denied", &["user", "api_key"], |_ctx: TaskContext, a: Login| async move {
                    Err::<u8, _>(TaskError::permanent("AuthError", format!("key {} refused for {}", a.api_key, a.user)))
                })
                .task("t.flaky", &["user", "api_key"], |_ctx: TaskContext, a: Login| async move {
                    Err::<u8, _>(TaskError::retryable("Upstream", format!("503 while checking {}", a.api_key)))
                })
        }

        fn message(id: &str, body: String) -> ReceivedMessage {
            ReceivedMessage {
                message_id: id.to_owned(),
                receipt_handle: format!("receipt-{id}"),
                body,
                receive_count: 1,
                sent_at: Utc::now(),
                first_received_at: None,
                attributes: Default::default(),
                group_id: None,
            }
        }

        /// A batch under a Lambda invoke span: every per-record line is flat JSON carrying the
        /// request id, message id, task id, task, transition and duration, and no argument,
        /// result or error message (all of which quote the planted values); the EMF lines carry
        /// the batch's counts and durations.
        #[tokio::test]
        async fn a_batch_logs_flat_json_without_arguments_and_writes_its_metrics() {
            let db = Db::open(Path::new(":memory:")).unwrap();
            let emf = Arc::new(Mutex::new(Vec::<String>::new()));
            let sink = {
                let emf = emf.clone();
                MetricsSink::new(move |line| emf.lock().unwrap().push(line.to_owned()))
            };
            let handler = BatchHandler::new(
                Arc::new(registry()),
                Arc::new(SqliteStore::new(db.clone())),
                Arc::new(SqliteQueue::new(db, "auth-dlq", None)),
                "auth",
                HandlerOptions::default(),
            )
            .with_metrics(sink);
            let args = vec![json!(PLANTED_USER), json!(PLANTED_KEY)];
            let envelopes: Vec<(&str, Envelope)> = vec![
                ("m-login", Envelope::new("t.login", args.clone(), Default::default())),
                ("m-denied", Envelope::new("t.denied", args.clone(), Default::default())),
                ("m-flaky", Envelope::new("t.flaky", args.clone(), Default::default())),
                ("m-unknown", Envelope::new("t.nowhere", args, Default::default())),
            ];
            let mut messages: Vec<ReceivedMessage> = envelopes.iter().map(|(id, e)| message(id, e.to_body())).collect();
            messages.push(message("m-garbage", format!("{{\"version\":1,\"task\":\"{PLANTED_KEY}\"")));
            let event = sqs_event("arn:aws:sqs:us-east-1:123456789012:auth", "us-east-1", &messages);

            let capture = Capture::default();
            let guard = capture.install();
            let response = handler
                .handle(event, None)
                .instrument(info_span!("Lambda runtime invoke", requestId = "req-7f00"))
                .await;
            drop(guard);
            assert_eq!(response.batch_item_failures.len(), 1, "the retry is handed back");

            let text = capture.text();
            for planted in [PLANTED_USER, PLANTED_KEY] {
                assert!(!text.contains(planted), "{planted} leaked into the logs:\n{text}");
            }
            let lines = capture.lines();
            assert!(lines.iter().all(|l| l["request_id"] == "req-7f00" && l["timestamp"].is_string()), "{text}");
            let line = |message_id: &str, message: &str| {
                lines
                    .iter()
                    .find(|l| l["message_id"] == message_id && l["message"] == message)
                    .unwrap_or_else(|| panic!("no {message:?} line for {message_id}:\n{text}"))
                    .clone()
            };
            for (message_id, envelope) in &envelopes[..3] {
                let started = line(message_id, "task started");
                assert_eq!(started["transition"], TaskState::Started.as_str());
                let finished = line(message_id, "task finished");
                assert_eq!(finished["task_id"], envelope.id.to_string());
                assert_eq!(finished["task"], envelope.task.as_str());
                assert!(finished["duration_ms"].is_u64(), "{finished}");
            }
            assert_eq!(line("m-login", "task finished")["transition"], "SUCCESS");
            let denied = line("m-denied", "task finished");
            assert_eq!((denied["transition"].as_str(), denied["error"].as_str()), (Some("FAILURE"), Some("AuthError")));
            assert_eq!(line("m-flaky", "task finished")["transition"], "RETRY");
            let unknown = line("m-unknown", "dead-lettering record");
            assert_eq!(unknown["task_id"], envelopes[3].1.id.to_string());
            assert_eq!(
                (unknown["transition"].as_str(), unknown["error"].as_str()),
                (Some("FAILURE"), Some("UnknownTask"))
            );
            assert_eq!(line("m-garbage", "dead-lettering record")["error"], "MalformedMessage");

            let emf = emf.lock().unwrap().clone();
            let documents: Vec<Value> = emf.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(documents.len(), 4, "one per task that ran, one for the rest: {emf:#?}");
            let document = |task: Option<&str>| {
                documents.iter().find(|d| d.get("task").and_then(Value::as_str) == task).unwrap().clone()
            };
            for (task, metric) in
                [("t.login", "TasksSucceeded"), ("t.denied", "TasksFailed"), ("t.flaky", "TasksRetried")]
            {
                let doc = document(Some(task));
                assert_eq!(doc[metric], 1, "{doc}");
                assert_eq!(doc["TaskDuration"].as_array().map(Vec::len), Some(1), "{doc}");
                assert_eq!(doc["module"], "auth");
            }
            assert_eq!(document(Some("t.flaky"))["RecordsHandedBack"], 1);
            assert_eq!(document(None)["TasksDeadLettered"], 2);
            for planted in [PLANTED_USER, PLANTED_KEY, "t.nowhere"] {
                assert!(!emf.concat().contains(planted), "{planted} in the metrics: {emf:#?}");
            }
        }
    }
}
