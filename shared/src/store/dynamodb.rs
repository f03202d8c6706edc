//! The DynamoDB `StateStore` (aws-sdk-dynamodb). One flat item per task id, readable in the
//! console; every write is one conditional `UpdateItem`/`PutItem`, and every attribute name goes
//! through `ExpressionAttributeNames` (`state`, `status`, `name`, `ttl` are reserved words).
//!
//! The `history` list grows in the write that changes the state (`list_append` in the same
//! `UpdateItem`). Progress reports do not know whether they are the first of their run, so a
//! report keeps its PROGRESS entry in `history_progress` (`if_not_exists`: the first one wins)
//! and the run's next state change moves it into `history`; reads show both as one history.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{
    ClaimOutcome, ClaimRequest, Completion, DEAD_LETTER_ERROR_KINDS, ListBy, ListCursor, ListQuery, ProgressUpdate,
    StateStore, StoreError,
};
use crate::queue::sqs::aws_error_chain;
use crate::record::{HISTORY_LIMIT, HISTORY_TRIMMED_TO, StateChange, TaskRecord, iso, ttl_from};
use crate::state::TaskState;

/// DynamoDB's item size limit.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// The table's hash key.
pub const HASH_KEY: &str = "id";
/// The id prefix of marker items (`acquire_marker`).
pub const MARKER_PREFIX: &str = "marker#";
/// The TTL attribute (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "ttl";
/// The list of state changes.
pub const HISTORY_ATTRIBUTE: &str = "history";
/// The PROGRESS entry of the current run, until the run's next state change moves it into
/// `history` (a one-entry list, so `list_append` can take it as it is).
pub const OPEN_PROGRESS_ATTRIBUTE: &str = "history_progress";

/// A global secondary index of the task table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSpec {
    /// Index name.
    pub name: &'static str,
    /// Its hash key.
    pub hash_key: &'static str,
    /// Its range key.
    pub range_key: &'static str,
}

/// Index for listing by state, newest first.
pub const BY_STATE: IndexSpec = IndexSpec { name: "by_state", hash_key: "state", range_key: "created_at" };
/// Index for listing by task name, newest first.
pub const BY_TASK: IndexSpec = IndexSpec { name: "by_task", hash_key: "task", range_key: "created_at" };
/// Every index of the table: the one definition that tests and infrastructure both use.
pub const INDEXES: [IndexSpec; 2] = [BY_STATE, BY_TASK];

/// Task records in a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    /// A store on `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoStore { client, table: table.into() }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table (on-demand, with its indexes and TTL) from the same definition the
    /// infrastructure template uses. An existing table is left as it is.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let string_attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| StoreError::Backend(e.to_string()))
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| StoreError::Backend(e.to_string()))
        };
        let mut request = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key(HASH_KEY, KeyType::Hash)?)
            .attribute_definitions(string_attr(HASH_KEY)?)
            .attribute_definitions(string_attr("created_at")?);
        for index in INDEXES {
            request = request.attribute_definitions(string_attr(index.hash_key)?).global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(index.name)
                    .key_schema(key(index.hash_key, KeyType::Hash)?)
                    .key_schema(key(index.range_key, KeyType::Range)?)
                    .projection(Projection::builder().projection_type(ProjectionType::All).build())
                    .build()
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
            );
        }
        match request.send().await {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => return Ok(()),
            Err(e) => return Err(map_err(e)),
        }
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL_ATTRIBUTE)
                    .build()
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
            )
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// An UpdateItem of one task's item with `expr` under `condition`; every name and value
    /// travels as a placeholder.
    fn conditional_update(&self, id: Uuid, expr: Expr, condition: impl Into<String>) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(id)))
            .update_expression(expr.update_expression())
            .condition_expression(condition)
            .set_expression_attribute_names(Some(expr.names))
            .set_expression_attribute_values(Some(expr.values))
    }

    fn key(id: Uuid) -> HashMap<String, AttributeValue> {
        HashMap::from([(HASH_KEY.to_owned(), AttributeValue::S(id.to_string()))])
    }

    /// Cuts a history the last write took past [`HISTORY_LIMIT`] back to its newest
    /// [`HISTORY_TRIMMED_TO`] entries: one small write once every ten state changes, and only
    /// for a task that changed state more than fifty times. Unless `history` still has the
    /// length seen, another write came first and this one is skipped (the next change trims).
    async fn trim_history(&self, id: Uuid, seen: Option<&AttributeValue>) {
        let Some(AttributeValue::L(history)) = seen else { return };
        if history.len() <= HISTORY_LIMIT {
            return;
        }
        let mut expr = Expr::default();
        let list = expr.name(HISTORY_ATTRIBUTE);
        let removes: Vec<String> = (0..history.len() - HISTORY_TRIMMED_TO).map(|i| format!("{list}[{i}]")).collect();
        let seen_len = expr.value(n_attr(history.len()));
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(id)))
            .update_expression(format!("REMOVE {}", removes.join(", ")))
            .condition_expression(format!("size({list}) = {seen_len}"))
            .set_expression_attribute_names(Some(expr.names))
            .set_expression_attribute_values(Some(expr.values))
            .send()
            .await;
        if let Err(e) = result {
            tracing::debug!(task_id = %id, error = %map_err(e), "history not trimmed; the next state change tries again");
        }
    }

    /// One Query of an index, newest first, from `start`.
    #[allow(clippy::too_many_arguments)]
    async fn query_index(
        &self,
        index: IndexSpec,
        key: &str,
        state: Option<TaskState>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        page_size: usize,
        start: Option<HashMap<String, AttributeValue>>,
    ) -> Result<(Vec<TaskRecord>, Option<HashMap<String, AttributeValue>>), StoreError> {
        let mut expr = Expr::default();
        let hash = expr.name(index.hash_key);
        let hash_value = expr.value(s_attr(key));
        let mut condition = format!("{hash} = {hash_value}");
        let range = if since.is_some() || until.is_some() { expr.name(index.range_key) } else { String::new() };
        match (since, until) {
            (Some(since), Some(until)) => {
                let (low, high) = (expr.value(s_attr(&iso(since))), expr.value(s_attr(&iso(until))));
                condition.push_str(&format!(" AND {range} BETWEEN {low} AND {high}"));
            }
            (Some(since), None) => {
                let low = expr.value(s_attr(&iso(since)));
                condition.push_str(&format!(" AND {range} >= {low}"));
            }
            (None, Some(until)) => {
                let high = expr.value(s_attr(&iso(until)));
                condition.push_str(&format!(" AND {range} <= {high}"));
            }
            (None, None) => {}
        }
        let filter = state.map(|state| {
            let (name, value) = (expr.name("state"), expr.value(s_attr(state.as_str())));
            format!("{name} = {value}")
        });
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index.name)
            .key_condition_expression(condition)
            .set_filter_expression(filter)
            .set_expression_attribute_names(Some(expr.names))
            .set_expression_attribute_values(Some(expr.values))
            .scan_index_forward(false)
            .limit(i32::try_from(page_size.max(1)).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(map_err)?;
        let records = out.items.unwrap_or_default().into_iter().map(from_item).collect::<Result<Vec<_>, _>>()?;
        Ok((records, out.last_evaluated_key))
    }
}

/// Builds update and condition expressions with every name and value as a placeholder.
#[derive(Debug, Default)]
struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    sets: Vec<String>,
    removes: Vec<String>,
}

impl Expr {
    fn name(&mut self, attr: &str) -> String {
        let placeholder = format!("#{attr}");
        self.names.insert(placeholder.clone(), attr.to_owned());
        placeholder
    }

    fn value(&mut self, value: AttributeValue) -> String {
        let placeholder = format!(":v{}", self.values.len());
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    fn set(&mut self, attr: &str, value: AttributeValue) {
        let (n, v) = (self.name(attr), self.value(value));
        self.sets.push(format!("{n} = {v}"));
    }

    fn set_if_missing(&mut self, attr: &str, value: AttributeValue) {
        let (n, v) = (self.name(attr), self.value(value));
        self.sets.push(format!("{n} = if_not_exists({n}, {v})"));
    }

    fn remove(&mut self, attr: &str) {
        let n = self.name(attr);
        self.removes.push(n);
    }

    /// Appends `state` to the history in this write, after the run's PROGRESS entry if it has
    /// one (which leaves `history_progress`).
    fn append_history(&mut self, state: TaskState, at: DateTime<Utc>) -> Result<(), StoreError> {
        let history = self.name(HISTORY_ATTRIBUTE);
        let open = self.name(OPEN_PROGRESS_ATTRIBUTE);
        let empty = self.value(AttributeValue::L(Vec::new()));
        let entry = self.value(to_attr(&[StateChange::new(state, at)])?);
        self.sets.push(format!(
            "{history} = list_append(list_append(if_not_exists({history}, {empty}), if_not_exists({open}, {empty})), {entry})"
        ));
        self.removes.push(open);
        Ok(())
    }

    /// `NOT #state IN (:terminal...)`.
    fn not_terminal(&mut self) -> String {
        let state = self.name("state");
        let terminal: Vec<String> = TaskState::TERMINAL.iter().map(|s| self.value(s_attr(s.as_str()))).collect();
        format!("NOT ({state} IN ({}))", terminal.join(", "))
    }

    fn update_expression(&self) -> String {
        let mut text = format!("SET {}", self.sets.join(", "));
        if !self.removes.is_empty() {
            text.push_str(&format!(" REMOVE {}", self.removes.join(", ")));
        }
        text
    }
}

fn s_attr(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn n_attr(number: impl ToString) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

/// The invocation's attributes, for the write that makes the item (later writes keep them).
fn set_invocation_if_missing(
    expr: &mut Expr,
    args: &[serde_json::Value],
    kwargs: &serde_json::Map<String, serde_json::Value>,
    parent_id: Option<Uuid>,
    root_id: Option<Uuid>,
) -> Result<(), StoreError> {
    expr.set_if_missing("args", to_attr(&args)?);
    expr.set_if_missing("kwargs", to_attr(kwargs)?);
    if let Some(parent) = parent_id {
        expr.set_if_missing("parent_id", s_attr(&parent.to_string()));
    }
    if let Some(root) = root_id {
        expr.set_if_missing("root_id", s_attr(&root.to_string()));
    }
    Ok(())
}

fn to_attr<T: Serialize>(value: &T) -> Result<AttributeValue, StoreError> {
    serde_dynamo::to_attribute_value(value).map_err(|e| StoreError::Backend(format!("cannot encode attribute: {e}")))
}

fn from_item(mut item: HashMap<String, AttributeValue>) -> Result<TaskRecord, StoreError> {
    let id = match item.get(HASH_KEY) {
        Some(AttributeValue::S(id)) => id.clone(),
        _ => String::new(),
    };
    let corrupt = |e: serde_dynamo::Error| StoreError::Corrupt { id: id.clone(), message: e.to_string() };
    let open = item.remove(OPEN_PROGRESS_ATTRIBUTE);
    let mut record: TaskRecord = serde_dynamo::from_item(item).map_err(corrupt)?;
    if let Some(open) = open {
        let entries: Vec<StateChange> = serde_dynamo::from_attribute_value(open).map_err(corrupt)?;
        record.history.extend(entries);
    }
    Ok(record)
}

fn map_err<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.code().unwrap_or_default().to_owned();
    let message = match e.message() {
        Some(m) => format!("{code}: {m}"),
        None => aws_error_chain(&e),
    };
    if code == "ResourceNotFoundException" {
        return StoreError::Backend(format!(
            "{message} (does the task table exist? deploy the infrastructure, or on an emulator run `taskbeat --aws local --create-resources`)"
        ));
    }
    if matches!(
        code.as_str(),
        "ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded"
    ) {
        return StoreError::Throttled(message);
    }
    StoreError::Backend(message)
}

/// The old item of a failed condition (`Some(None)` when the service sent none), or `None`
/// when the error is something else.
fn condition_failed<R>(e: &SdkError<UpdateItemError, R>) -> Option<Option<HashMap<String, AttributeValue>>> {
    match e.as_service_error()? {
        UpdateItemError::ConditionalCheckFailedException(failed) => Some(failed.item.clone()),
        _ => None,
    }
}

fn merged_progress(expr: &mut Expr, update: &ProgressUpdate) -> Result<(), StoreError> {
    if let Some(progress) = update.progress {
        expr.set("progress", n_attr(progress.min(100)));
    }
    if let Some(status) = &update.status {
        expr.set("status", s_attr(status));
    }
    if let Some(meta) = &update.meta {
        expr.set("meta", to_attr(meta)?);
    }
    Ok(())
}

#[async_trait]
impl StateStore for DynamoStore {
    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %record.id))]
    async fn create(&self, record: &TaskRecord) -> Result<(), StoreError> {
        let item =
            serde_dynamo::to_item(record).map_err(|e| StoreError::Backend(format!("cannot encode record: {e}")))?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#id)")
            .expression_attribute_names("#id", HASH_KEY)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Err(StoreError::AlreadyExists(record.id)),
            Err(e) => Err(map_err(e)),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %request.id))]
    async fn claim(&self, request: &ClaimRequest) -> Result<ClaimOutcome, StoreError> {
        let now = Utc::now();
        let mut expr = Expr::default();
        expr.set("state", s_attr(TaskState::Started.as_str()));
        expr.set("started_at", s_attr(&iso(now)));
        expr.set("updated_at", s_attr(&iso(now)));
        expr.set("lease_until", n_attr((now + request.lease).timestamp_millis()));
        expr.append_history(TaskState::Started, now)?;
        expr.set_if_missing("task", s_attr(&request.task));
        expr.set_if_missing("queue", s_attr(&request.queue));
        set_invocation_if_missing(&mut expr, &request.args, &request.kwargs, request.parent_id, request.root_id)?;
        expr.set_if_missing("retries", n_attr(request.retries));
        expr.set_if_missing("progress", n_attr(0));
        expr.set_if_missing("created_at", s_attr(&iso(now)));
        expr.set_if_missing(TTL_ATTRIBUTE, n_attr(ttl_from(now)));
        let id = expr.name(HASH_KEY);
        let lease = expr.name("lease_until");
        let now_ms = expr.value(n_attr(now.timestamp_millis()));
        let not_terminal = expr.not_terminal();
        let condition = format!(
            "attribute_not_exists({id}) OR ({not_terminal} AND (attribute_not_exists({lease}) OR {lease} < {now_ms}))"
        );
        let result = self
            .conditional_update(request.id, expr, condition)
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                self.trim_history(request.id, item.get(HISTORY_ATTRIBUTE)).await;
                let mut record = from_item(item)?;
                crate::record::trim_history(&mut record.history);
                Ok(ClaimOutcome::Claimed(Box::new(record)))
            }
            Err(e) => {
                let old = condition_failed(&e).map(Option::unwrap_or_default);
                match old {
                    Some(item) => {
                        let record = from_item(item)?;
                        if record.state.is_terminal() {
                            Ok(ClaimOutcome::Finished(record.state))
                        } else {
                            let until = record.lease_until.unwrap_or_default();
                            Ok(ClaimOutcome::Busy { lease_until: super::millis_to_time(until) })
                        }
                    }
                    None => Err(map_err(e)),
                }
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %id))]
    async fn progress(&self, id: Uuid, update: &ProgressUpdate) -> Result<(), StoreError> {
        let mut expr = Expr::default();
        let now = Utc::now();
        expr.set("state", s_attr(TaskState::Progress.as_str()));
        expr.set("updated_at", s_attr(&iso(now)));
        // The first report of the run keeps its time; the run's next state change files it.
        expr.set_if_missing(OPEN_PROGRESS_ATTRIBUTE, to_attr(&[StateChange::new(TaskState::Progress, now)])?);
        merged_progress(&mut expr, update)?;
        let key = expr.name(HASH_KEY);
        let condition = format!("attribute_exists({key}) AND {}", expr.not_terminal());
        let result = self
            .conditional_update(id, expr, condition)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match condition_failed(&e) {
                Some(old) => match old {
                    Some(item) if !item.is_empty() => Err(StoreError::Terminal { id, state: from_item(item)?.state }),
                    _ => Err(StoreError::NotFound(id)),
                },
                None => Err(map_err(e)),
            },
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(task_id = %completion.id, state = %completion.state))]
    async fn complete(&self, completion: &Completion) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut expr = Expr::default();
        let mut last = completion.last_progress.clone().unwrap_or_default();
        if completion.state == TaskState::Success {
            last.progress = Some(100);
        }
        merged_progress(&mut expr, &last)?;
        expr.set("state", s_attr(completion.state.as_str()));
        expr.set("updated_at", s_attr(&iso(now)));
        expr.append_history(completion.state, now)?;
        expr.remove("lease_until");
        match &completion.error {
            Some(error) => expr.set("error", to_attr(error)?),
            None => expr.remove("error"),
        }
        if let Some(retries) = completion.retries {
            expr.set("retries", n_attr(retries));
        } else {
            expr.set_if_missing("retries", n_attr(0));
        }
        if completion.state.is_terminal() {
            expr.set("finished_at", s_attr(&iso(now)));
            match &completion.result {
                Some(result) => expr.set("result", to_attr(result)?),
                None => expr.remove("result"),
            }
        }
        // A completion may be the first write (a dead-lettered envelope): make the item whole.
        expr.set_if_missing("task", s_attr(&completion.task));
        expr.set_if_missing("queue", s_attr(&completion.queue));
        expr.set_if_missing("created_at", s_attr(&iso(now)));
        expr.set_if_missing(TTL_ATTRIBUTE, n_attr(ttl_from(now)));
        set_invocation_if_missing(
            &mut expr,
            &completion.args,
            &completion.kwargs,
            completion.parent_id,
            completion.root_id,
        )?;
        if last.progress.is_none() {
            expr.set_if_missing("progress", n_attr(0));
        }
        let key = expr.name(HASH_KEY);
        let condition = format!("attribute_not_exists({key}) OR {}", expr.not_terminal());
        let result = self
            .conditional_update(completion.id, expr, condition)
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let updated = out.attributes.unwrap_or_default();
                self.trim_history(completion.id, updated.get(HISTORY_ATTRIBUTE)).await;
                Ok(())
            }
            Err(e) => {
                if let Some(old) = condition_failed(&e) {
                    let state = old.map(from_item).transpose()?.map_or(TaskState::Success, |r| r.state);
                    return Err(StoreError::Terminal { id: completion.id, state });
                }
                if e.message().is_some_and(|m| m.contains("size")) {
                    return Err(StoreError::TooLarge { id: completion.id, bytes: 0, limit: MAX_ITEM_BYTES });
                }
                Err(map_err(e))
            }
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn get(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(map_err)?;
        out.item.map(from_item).transpose()
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn acquire_marker(&self, key: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        // Markers share the task table under their own id prefix; they carry neither `state`
        // nor `task`, so the indexes never see them.
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(HASH_KEY, s_attr(&format!("{MARKER_PREFIX}{key}")))
            .item("marker_until", n_attr(until.timestamp_millis()))
            .item(TTL_ATTRIBUTE, n_attr(until.timestamp() + 1))
            .condition_expression("attribute_not_exists(#id) OR #until <= :now")
            .expression_attribute_names("#id", HASH_KEY)
            .expression_attribute_names("#until", "marker_until")
            .expression_attribute_values(":now", n_attr(now.timestamp_millis()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list(&self, query: &ListQuery) -> Result<Vec<TaskRecord>, StoreError> {
        self.list_page(query, None).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn list_page(&self, query: &ListQuery, cursor: Option<&ListCursor>) -> Result<Vec<TaskRecord>, StoreError> {
        let (index, key, state) = match &query.by {
            ListBy::State(state) => (BY_STATE, state.as_str().to_owned(), None),
            ListBy::Task(task) => (BY_TASK, task.clone(), None),
            ListBy::TaskAndState(task, state) => (BY_TASK, task.clone(), Some(*state)),
        };
        let limit = query.limit;
        let until = cursor.map(|c| c.created_at);
        if limit == 0 || query.since.zip(until).is_some_and(|(since, until)| since > until) {
            return Ok(Vec::new());
        }
        let mut records: Vec<TaskRecord> = Vec::new();
        let mut start = None;
        loop {
            // Past a full page, small pages are enough to see the end of the boundary's tie.
            let page_size = if records.len() < limit { limit - records.len() + 1 } else { 10 };
            let (page, next) = self.query_index(index, &key, state, query.since, until, page_size, start).await?;
            records.extend(page.into_iter().filter(|r| cursor.is_none_or(|c| c.precedes(r))));
            start = next;
            if start.is_none() {
                break;
            }
            // The index orders by created_at only; records of the same millisecond come in any
            // order. Once a record older than the page's last one is in, every record sharing
            // the page's last time is in too, and (created_at, id) order can be cut exactly.
            if records.len() >= limit && records.last().map(|r| r.created_at) < Some(records[limit - 1].created_at) {
                break;
            }
        }
        records.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
        records.truncate(limit);
        Ok(records)
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn reopen_dead_letter(&self, id: Uuid) -> Result<bool, StoreError> {
        let now = Utc::now();
        let mut expr = Expr::default();
        expr.set("state", s_attr(TaskState::Pending.as_str()));
        expr.set("updated_at", s_attr(&iso(now)));
        expr.append_history(TaskState::Pending, now)?;
        for attr in ["error", "result", "finished_at", "lease_until"] {
            expr.remove(attr);
        }
        let state = expr.name("state");
        let failure = expr.value(s_attr(TaskState::Failure.as_str()));
        let (error, kind) = (expr.name("error"), expr.name("type"));
        let kinds: Vec<String> = DEAD_LETTER_ERROR_KINDS.iter().map(|k| expr.value(s_attr(k))).collect();
        let condition = format!("{state} = {failure} AND {error}.{kind} IN ({})", kinds.join(", "));
        let result = self
            .conditional_update(id, expr, condition)
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                self.trim_history(id, out.attributes.unwrap_or_default().get(HISTORY_ATTRIBUTE)).await;
                Ok(true)
            }
            Err(e) => match condition_failed(&e) {
                Some(Some(item)) if !item.is_empty() => {
                    let record = from_item(item)?;
                    if record.state.is_terminal() {
                        Err(StoreError::Terminal { id, state: record.state })
                    } else {
                        Ok(false)
                    }
                }
                Some(_) => Ok(false),
                None => Err(map_err(e)),
            },
        }
    }
}
