//! Celery's DynamoDB result backend, written by taskbeat, so a producer's `AsyncResult(id)`
//! reads the state of tasks taskbeat runs.
//!
//! One item per task id, as `celery.backends.dynamodb.DynamoDBBackend` stores it: hash key `id`
//! (a string: the key Celery's key-value backend builds for the task, see [`KeyForm`]),
//! `result` (binary: the UTF-8 JSON of the task's meta: `status`, `result`, `traceback`,
//! `children`, `date_done`, `task_id`, plus the extended fields with `result_extended`),
//! `timestamp` (a number, epoch seconds) and `ttl` (a number, epoch seconds) when results
//! expire. taskbeat adds `status` (the state as text) so that a conditional write can keep a
//! stored SUCCESS: as Celery's own backend does, a stored SUCCESS is never overwritten.
//!
//! [`CeleryResultStore`] wraps the task store: each state change the task store accepts is then
//! written here too. The task record stays the source of truth: a Celery item that cannot be
//! written after a few tries is logged (without any value) and skipped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::record::{ErrorInfo, TaskRecord};
use crate::state::TaskState;
use crate::store::{
    ClaimOutcome, ClaimRequest, Completion, ListCursor, ListQuery, ProgressUpdate, StateStore, StoreError,
};

/// The key form of Celery 5.x's DynamoDB backend (checked against Celery 5.7.0): the key-value
/// backend builds the key as bytes (`b'celery-task-meta-' + id`) and the DynamoDB backend
/// stores `str()` of it, so the stored string is the Python bytes literal, quotes and `b`
/// included.
pub const DEFAULT_KEY_FORM: &str = "b'celery-task-meta-{id}'";
/// The placeholder of the task id in a key form.
pub const ID_PLACEHOLDER: &str = "{id}";
/// The hash key attribute of Celery's result table.
pub const KEY_ATTRIBUTE: &str = "id";
/// The meta attribute (binary).
pub const RESULT_ATTRIBUTE: &str = "result";
/// The write time attribute (number).
pub const TIMESTAMP_ATTRIBUTE: &str = "timestamp";
/// The expiry attribute (number), Celery's TTL attribute.
pub const TTL_ATTRIBUTE: &str = "ttl";
/// taskbeat's own attribute: the state as text, for the conditional write.
pub const STATUS_ATTRIBUTE: &str = "status";
/// The module Celery looks exception types up in for taskbeat's error kinds. It is no Python
/// module, so Celery makes an exception class of the error kind's name (in
/// `celery.exceptions`), which `.get()` raises with the error's message.
pub const TASKBEAT_EXC_MODULE: &str = "taskbeat";

/// Python's built-in exception names: an error of such a kind is recorded with
/// `exc_module = "builtins"`, so `.get()` raises the real Python class.
const PYTHON_BUILTINS: [&str; 17] = [
    "ArithmeticError",
    "AssertionError",
    "AttributeError",
    "ConnectionError",
    "Exception",
    "FileNotFoundError",
    "IndexError",
    "KeyError",
    "LookupError",
    "NotImplementedError",
    "OSError",
    "OverflowError",
    "PermissionError",
    "RuntimeError",
    "TimeoutError",
    "TypeError",
    "ValueError",
];

/// A key form that is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Celery result key form {form:?} {problem}; the form Celery 5.x's DynamoDB backend uses is \"{DEFAULT_KEY_FORM}\""
)]
pub struct KeyFormError {
    /// The form given.
    pub form: String,
    /// What is wrong.
    pub problem: &'static str,
}

/// How the task id becomes the item key: a template with one `{id}`. Celery versions differ
/// (5.x stores the bytes literal `b'celery-task-meta-<id>'`; a backend fixed to decode the key,
/// or a `global_keyprefix` in `result_backend_transport_options`, gives another form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyForm(String);

impl KeyForm {
    /// Checks a template: exactly one `{id}`, at most 1,024 bytes.
    pub fn parse(form: &str) -> Result<KeyForm, KeyFormError> {
        let fail = |problem| Err(KeyFormError { form: form.to_owned(), problem });
        if form.matches(ID_PLACEHOLDER).count() != 1 {
            return fail("must hold `{id}` exactly once");
        }
        if form.len() > 1024 {
            return fail("is over 1,024 bytes");
        }
        Ok(KeyForm(form.to_owned()))
    }

    /// The item key of a task.
    pub fn key(&self, id: Uuid) -> String {
        self.0.replace(ID_PLACEHOLDER, &id.to_string())
    }

    /// The template.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyForm {
    fn default() -> Self {
        KeyForm(DEFAULT_KEY_FORM.to_owned())
    }
}

/// Where and how Celery results are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultBackendConfig {
    /// The table Celery's backend reads (`dynamodb://.../TABLE`).
    pub table: String,
    /// The item key form.
    pub key: KeyForm,
    /// Items expire this long after their write (the backend URL's `ttl_seconds`); none when
    /// absent.
    pub expires: Option<Duration>,
    /// Celery's `result_extended`: add name, args, kwargs, worker, retries and queue.
    pub extended: bool,
    /// The Celery queue name of each taskbeat queue that declares one (`celery_queue`): the
    /// `queue` of an extended result, as Celery would record it.
    pub celery_queues: std::collections::BTreeMap<String, String>,
}

/// The meta Celery stores for a state (`_get_result_meta` plus `task_id`). `date_done` is set
/// for the ready states (SUCCESS, FAILURE, REVOKED).
pub fn meta(id: Uuid, state: TaskState, result: Value, now: DateTime<Utc>) -> Map<String, Value> {
    let ready = matches!(state, TaskState::Success | TaskState::Failure | TaskState::Revoked);
    let mut meta = Map::new();
    meta.insert("status".into(), state.as_str().into());
    meta.insert("result".into(), result);
    meta.insert("traceback".into(), Value::Null);
    meta.insert("children".into(), json!([]));
    meta.insert(
        "date_done".into(),
        if ready { now.to_rfc3339_opts(SecondsFormat::Micros, false).into() } else { Value::Null },
    );
    meta.insert("task_id".into(), id.to_string().into());
    meta
}

/// An error as Celery's JSON backend stores an exception (`prepare_exception`).
pub fn exception(error: &ErrorInfo) -> Value {
    let module = if PYTHON_BUILTINS.contains(&error.kind.as_str()) {
        "builtins"
    } else if error.kind == "TimeLimitExceeded" {
        "celery.exceptions"
    } else {
        TASKBEAT_EXC_MODULE
    };
    json!({ "exc_type": error.kind, "exc_message": [error.message], "exc_module": module })
}

/// What Celery stores for REVOKED: its `TaskRevokedError` with the reason.
pub fn revoked(reason: &str) -> Value {
    json!({ "exc_type": "TaskRevokedError", "exc_message": [reason], "exc_module": "celery.exceptions" })
}

/// The `result` of a completion's state, as Celery stores it.
pub fn completion_result(completion: &Completion) -> Value {
    let error = || completion.error.clone().unwrap_or_else(|| ErrorInfo::new("Exception", completion.state.as_str()));
    match completion.state {
        TaskState::Success => completion.result.clone().unwrap_or(Value::Null),
        TaskState::Revoked => {
            revoked(&completion.error.as_ref().map_or_else(|| "revoked".to_owned(), |e| e.message.clone()))
        }
        TaskState::Failure | TaskState::Retry => exception(&error()),
        _ => Value::Null,
    }
}

/// The meta of a progress report, as `update_state(state='PROGRESS', meta=...)` stores it: the
/// meta is the result.
pub fn progress_result(update: &ProgressUpdate) -> Value {
    match &update.meta {
        Some(meta) => Value::Object(meta.clone()),
        None => {
            let mut meta = Map::new();
            if let Some(status) = &update.status {
                meta.insert("status".into(), status.clone().into());
            }
            if let Some(progress) = update.progress {
                meta.insert("progress".into(), progress.into());
            }
            Value::Object(meta)
        }
    }
}

/// The extended fields (`result_extended`) from the task record.
pub fn extended_fields(
    record: &TaskRecord,
    celery_queues: &std::collections::BTreeMap<String, String>,
) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("name".into(), record.task.clone().into());
    fields.insert("args".into(), Value::Array(record.args.clone()));
    fields.insert("kwargs".into(), Value::Object(record.kwargs.clone()));
    fields.insert("worker".into(), worker_name(&record.queue).into());
    fields.insert("retries".into(), record.retries.into());
    let queue = celery_queues.get(&record.queue).unwrap_or(&record.queue);
    fields.insert("queue".into(), queue.clone().into());
    if let Some(parent) = record.parent_id {
        fields.insert("parent_id".into(), parent.to_string().into());
    }
    fields
}

fn worker_name(queue: &str) -> String {
    format!("taskbeat@{queue}")
}

/// Why a Celery result item was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultWriteError {
    /// The table holds SUCCESS for the task: kept.
    #[error("Celery result of task {0} is SUCCESS; a stored SUCCESS is never overwritten")]
    SuccessKept(Uuid),
    /// DynamoDB failed.
    #[error("Celery result table: {0}")]
    Backend(String),
}

/// Writes Celery result items to DynamoDB.
#[derive(Debug, Clone)]
pub struct CeleryResultWriter {
    client: aws_sdk_dynamodb::Client,
    config: ResultBackendConfig,
}

impl CeleryResultWriter {
    /// A writer on `config.table`.
    pub fn new(client: aws_sdk_dynamodb::Client, config: ResultBackendConfig) -> Self {
        CeleryResultWriter { client, config }
    }

    /// The configuration.
    pub fn config(&self) -> &ResultBackendConfig {
        &self.config
    }

    /// Writes one state's meta, unless the item says SUCCESS (one conditional `PutItem`).
    pub async fn write(&self, id: Uuid, meta: &Map<String, Value>) -> Result<(), ResultWriteError> {
        let now = Utc::now();
        let seconds = now.timestamp_micros() as f64 / 1e6;
        let body = serde_json::to_vec(meta).map_err(|e| ResultWriteError::Backend(e.to_string()))?;
        let status = meta.get("status").and_then(Value::as_str).unwrap_or_default().to_owned();
        let mut request = self
            .client
            .put_item()
            .table_name(&self.config.table)
            .item(KEY_ATTRIBUTE, AttributeValue::S(self.config.key.key(id)))
            .item(RESULT_ATTRIBUTE, AttributeValue::B(body.into()))
            .item(TIMESTAMP_ATTRIBUTE, AttributeValue::N(format!("{seconds:.6}")))
            .item(STATUS_ATTRIBUTE, AttributeValue::S(status))
            .condition_expression("attribute_not_exists(#id) OR #status <> :success")
            .expression_attribute_names("#id", KEY_ATTRIBUTE)
            .expression_attribute_names("#status", STATUS_ATTRIBUTE)
            .expression_attribute_values(":success", AttributeValue::S(TaskState::Success.as_str().to_owned()));
        if let Some(expires) = self.config.expires {
            let ttl = now.timestamp() + i64::try_from(expires.as_secs()).unwrap_or(i64::MAX / 4);
            request = request.item(TTL_ATTRIBUTE, AttributeValue::N(ttl.to_string()));
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Err(ResultWriteError::SuccessKept(id)),
            Err(e) => Err(ResultWriteError::Backend(crate::queue::sqs::aws_error_chain(&e))),
        }
    }

    /// Creates the table as Celery's backend does (hash key `id`, a string; on demand), with
    /// its TTL on `ttl` when results expire. An existing table is left as it is.
    pub async fn create_table(&self) -> Result<(), ResultWriteError> {
        let backend = |e: &dyn std::error::Error| ResultWriteError::Backend(crate::queue::sqs::aws_error_chain(e));
        let created = self
            .client
            .create_table()
            .table_name(&self.config.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(KEY_ATTRIBUTE)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| backend(&e))?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(KEY_ATTRIBUTE)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| backend(&e))?,
            )
            .send()
            .await;
        match created {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => return Ok(()),
            Err(e) => return Err(backend(&e)),
        }
        if self.config.expires.is_some() {
            self.client
                .update_time_to_live()
                .table_name(&self.config.table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .enabled(true)
                        .attribute_name(TTL_ATTRIBUTE)
                        .build()
                        .map_err(|e| backend(&e))?,
                )
                .send()
                .await
                .map_err(|e| backend(&e))?;
        }
        Ok(())
    }
}

/// Tries at writing one Celery item before it is given up (logged).
const WRITE_ATTEMPTS: u32 = 3;

/// A state store that also writes each accepted state change to Celery's result table.
#[derive(Debug, Clone)]
pub struct CeleryResultStore {
    inner: Arc<dyn StateStore>,
    writer: CeleryResultWriter,
}

impl CeleryResultStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn StateStore>, writer: CeleryResultWriter) -> Self {
        CeleryResultStore { inner, writer }
    }

    /// Writes `state` with `result` for task `id`; a failure is logged, never returned: the task
    /// record, already written, is the source of truth.
    async fn mirror(&self, id: Uuid, state: TaskState, result: Value) {
        let mut meta = meta(id, state, result, Utc::now());
        if self.writer.config.extended {
            match self.inner.get(id).await {
                Ok(Some(record)) => meta.extend(extended_fields(&record, &self.writer.config.celery_queues)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(task_id = %id, error = %e, "task record not read for Celery's extended result")
                }
            }
        }
        let mut pause = Duration::from_millis(50);
        for attempt in 1..=WRITE_ATTEMPTS {
            match self.writer.write(id, &meta).await {
                Ok(()) => return,
                Err(ResultWriteError::SuccessKept(_)) => {
                    tracing::info!(task_id = %id, state = %state, "Celery result is SUCCESS already; kept");
                    return;
                }
                Err(ResultWriteError::Backend(e)) if attempt < WRITE_ATTEMPTS => {
                    tracing::warn!(task_id = %id, error = %e, attempt, "writing the Celery result failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 4;
                }
                Err(ResultWriteError::Backend(e)) => {
                    tracing::warn!(task_id = %id, state = %state, error = %e, "Celery result not written; the task record has it");
                }
            }
        }
    }
}

#[async_trait]
impl StateStore for CeleryResultStore {
    async fn create(&self, record: &TaskRecord) -> Result<(), StoreError> {
        // Celery stores nothing for PENDING: a missing item reads PENDING.
        self.inner.create(record).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let outcome = self.inner.claim(request).await?;
        if let ClaimOutcome::Claimed(_) = &outcome {
            let started = json!({ "pid": std::process::id(), "hostname": worker_name(&request.queue) });
            self.mirror(request.id, TaskState::Started, started).await;
        }
        Ok(outcome)
    }

    async fn progress(&self, id: Uuid, update: &ProgressUpdate) -> Result<(), StoreError> {
        self.inner.progress(id, update).await?;
        self.mirror(id, TaskState::Progress, progress_result(update)).await;
        Ok(())
    }

    async fn complete(&self, completion: &Completion) -> Result<(), StoreError> {
        self.inner.complete(completion).await?;
        self.mirror(completion.id, completion.state, completion_result(completion)).await;
        Ok(())
    }

    async fn get(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        self.inner.get(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.list(query).await
    }

    async fn list_page(&self, query: &ListQuery, cursor: Option<&ListCursor>) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.list_page(query, cursor).await
    }

    async fn reopen_dead_letter(&self, id: Uuid) -> Result<bool, StoreError> {
        let reopened = self.inner.reopen_dead_letter(id).await?;
        if reopened {
            self.mirror(id, TaskState::Pending, Value::Null).await;
        }
        Ok(reopened)
    }

    async fn revoke(&self, id: Uuid, reason: &str) -> Result<TaskState, StoreError> {
        let was = self.inner.revoke(id, reason).await?;
        self.mirror(id, TaskState::Revoked, revoked(reason)).await;
        Ok(was)
    }

    async fn acquire_marker(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.acquire_marker(key, ttl).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_form_is_checked_and_filled() {
        let id = Uuid::parse_str("31f59191-7106-44ca-b443-a083a8425877").unwrap();
        // What Celery 5.7.0's DynamoDB backend stores (`str(b'celery-task-meta-' + id)`).
        assert_eq!(KeyForm::default().key(id), "b'celery-task-meta-31f59191-7106-44ca-b443-a083a8425877'");
        assert_eq!(KeyForm::parse("celery-task-meta-{id}").unwrap().key(id), format!("celery-task-meta-{id}"));
        for bad in ["celery-task-meta-", "{id}{id}", ""] {
            let err = KeyForm::parse(bad).unwrap_err().to_string();
            assert!(err.contains("exactly once") && err.contains(DEFAULT_KEY_FORM), "{err}");
        }
    }

    #[test]
    fn meta_has_celerys_fields() {
        let id = Uuid::new_v4();
        let now = DateTime::parse_from_rfc3339("2026-12-03T09:59:59.402Z").unwrap().with_timezone(&Utc);
        let done = meta(id, TaskState::Success, json!({"processed": 2}), now);
        assert_eq!(
            Value::Object(done),
            json!({"status": "SUCCESS", "result": {"processed": 2}, "traceback": null, "children": [],
                   "date_done": "2026-12-03T09:59:59.402000+00:00", "task_id": id.to_string()})
        );
        let running = meta(id, TaskState::Progress, json!({"progress": 50}), now);
        assert_eq!(running["date_done"], Value::Null);
    }

    #[test]
    fn errors_become_celery_exceptions() {
        let mut completion = Completion::new(Uuid::new_v4(), "t", "q", TaskState::Failure);
        completion.error = Some(ErrorInfo::new("UserNotFound", "user u9 not found"));
        assert_eq!(
            completion_result(&completion),
            json!({"exc_type": "UserNotFound", "exc_message": ["user u9 not found"], "exc_module": "taskbeat"})
        );
        completion.error = Some(ErrorInfo::new("ValueError", "bad"));
        assert_eq!(completion_result(&completion)["exc_module"], "builtins");
        completion.state = TaskState::Revoked;
        completion.error = Some(ErrorInfo::new("Expired", "expired at X before it ran"));
        assert_eq!(
            completion_result(&completion),
            json!({"exc_type": "TaskRevokedError", "exc_message": ["expired at X before it ran"],
                   "exc_module": "celery.exceptions"})
        );
        completion.state = TaskState::Success;
        completion.result = Some(json!([1, 2]));
        assert_eq!(completion_result(&completion), json!([1, 2]));
    }

    #[test]
    fn extended_fields_come_from_the_record() {
        let request = ClaimRequest {
            id: Uuid::new_v4(),
            task: "t.x".into(),
            queue: "default".into(),
            args: vec![json!(["u1"]), json!("recompute")],
            kwargs: Map::from_iter([("dry".to_owned(), json!(true))]),
            retries: 2,
            parent_id: Some(Uuid::nil()),
            root_id: None,
            lease: chrono::Duration::seconds(60),
        };
        let record = crate::store::apply_claim(None, &request, Utc::now()).unwrap();
        assert_eq!(
            Value::Object(extended_fields(&record, &Default::default())),
            json!({"name": "t.x", "args": [["u1"], "recompute"], "kwargs": {"dry": true}, "worker": "taskbeat@default",
                   "retries": 2, "queue": "default", "parent_id": Uuid::nil().to_string()})
        );
        let named = std::collections::BTreeMap::from([("default".to_owned(), "user.tasks".to_owned())]);
        assert_eq!(extended_fields(&record, &named)["queue"], "user.tasks", "the queue Celery routed it to");
    }

    #[test]
    fn progress_meta_is_the_result() {
        let mut meta = Map::new();
        meta.insert("current".into(), 3.into());
        let update = ProgressUpdate { progress: Some(30), status: None, meta: Some(meta.clone()) };
        assert_eq!(progress_result(&update), Value::Object(meta));
        let update = ProgressUpdate { progress: Some(30), status: Some("working".into()), meta: None };
        assert_eq!(progress_result(&update), json!({"status": "working", "progress": 30}));
    }
}
