//! Per-batch metrics as CloudWatch Embedded Metric Format (EMF) lines.
//!
//! In Lambda, a JSON line on stdout with an `_aws.CloudWatchMetrics` member becomes CloudWatch
//! metrics without any API call. After each batch the handler writes one document per task name
//! it ran (and one for records of no known task, such as malformed messages), in namespace
//! [`NAMESPACE`]:
//!
//! - `TasksSucceeded`, `TasksFailed`, `TasksRetried`, `TasksRevoked`, `TasksDeadLettered`,
//!   `RecordsHandedBack` (Count), dimension `module`;
//! - `TaskDuration` (Milliseconds, one value per run), dimensions `module` and `task`.
//!
//! Only names the module registered become a `task` dimension value, so a producer sending
//! made-up task names cannot create metrics without bound.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::state::TaskState;

/// The CloudWatch namespace of taskbeat's metrics.
pub const NAMESPACE: &str = "taskbeat";
/// The EMF specification's limit on the values of one metric in one document.
pub const MAX_VALUES_PER_METRIC: usize = 100;

const HANDED_BACK: &str = "RecordsHandedBack";
const DURATION: &str = "TaskDuration";

/// What the handler recorded for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The run ended in SUCCESS.
    Succeeded,
    /// The run ended in FAILURE.
    Failed,
    /// The run ended in RETRY (it will run again).
    Retried,
    /// Not run: expired, recorded REVOKED.
    Revoked,
    /// Sent to the dead-letter queue (malformed, or a task this module does not have).
    DeadLettered,
}

impl Outcome {
    /// Every outcome, in the order of their metrics.
    pub const ALL: [Outcome; 5] =
        [Outcome::Succeeded, Outcome::Failed, Outcome::Retried, Outcome::Revoked, Outcome::DeadLettered];

    /// The name of the metric counting it.
    pub fn metric(self) -> &'static str {
        match self {
            Outcome::Succeeded => "TasksSucceeded",
            Outcome::Failed => "TasksFailed",
            Outcome::Retried => "TasksRetried",
            Outcome::Revoked => "TasksRevoked",
            Outcome::DeadLettered => "TasksDeadLettered",
        }
    }

    /// The outcome of a run that ended in `state`; `None` for states a run does not end in.
    pub fn of_run(state: TaskState) -> Option<Outcome> {
        match state {
            TaskState::Success => Some(Outcome::Succeeded),
            TaskState::Failure => Some(Outcome::Failed),
            TaskState::Retry => Some(Outcome::Retried),
            TaskState::Revoked => Some(Outcome::Revoked),
            TaskState::Pending | TaskState::Started | TaskState::Progress => None,
        }
    }
}

/// What one record contributed to its batch's metrics, filled in as the handler learns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordTally {
    /// The task's name, once known to be one the module registered.
    pub task: Option<String>,
    /// How long the task body ran, when it ran.
    pub duration: Option<Duration>,
    /// What was recorded, when the record is done with.
    pub outcome: Option<Outcome>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Counts {
    outcomes: BTreeMap<&'static str, u64>,
    handed_back: u64,
    durations_ms: Vec<f64>,
}

/// The counts and durations of one batch, by task name.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchMetrics {
    module: String,
    by_task: BTreeMap<Option<String>, Counts>,
}

impl BatchMetrics {
    /// Empty metrics for a batch of `module`.
    pub fn new(module: impl Into<String>) -> Self {
        BatchMetrics { module: module.into(), by_task: BTreeMap::new() }
    }

    /// Adds one record: its tally, and whether it was handed back for redelivery.
    pub fn add(&mut self, tally: &RecordTally, handed_back: bool) {
        let counts = self.by_task.entry(tally.task.clone()).or_default();
        if let Some(outcome) = tally.outcome {
            *counts.outcomes.entry(outcome.metric()).or_default() += 1;
        }
        if handed_back {
            counts.handed_back += 1;
        }
        if let Some(duration) = tally.duration {
            // Microsecond precision: short tasks would all read 0 ms otherwise.
            counts.durations_ms.push(duration.as_micros() as f64 / 1000.0);
        }
    }

    /// True when no record was added.
    pub fn is_empty(&self) -> bool {
        self.by_task.is_empty()
    }

    /// The EMF documents of the batch, stamped `at`: one per task name (more when a task ran
    /// over [`MAX_VALUES_PER_METRIC`] times; the counts are in the first), none for an empty
    /// batch.
    pub fn documents(&self, at: DateTime<Utc>) -> Vec<Value> {
        let mut documents = Vec::new();
        for (task, counts) in &self.by_task {
            let mut chunks: Vec<&[f64]> = counts.durations_ms.chunks(MAX_VALUES_PER_METRIC).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            for (index, durations) in chunks.into_iter().enumerate() {
                let mut root = Map::new();
                let mut directives = Vec::new();
                root.insert("module".into(), Value::String(self.module.clone()));
                if index == 0 {
                    let mut metrics = Vec::new();
                    for name in Outcome::ALL.map(Outcome::metric) {
                        root.insert(name.into(), json!(counts.outcomes.get(name).copied().unwrap_or(0)));
                        metrics.push(json!({ "Name": name, "Unit": "Count" }));
                    }
                    root.insert(HANDED_BACK.into(), json!(counts.handed_back));
                    metrics.push(json!({ "Name": HANDED_BACK, "Unit": "Count" }));
                    directives.push(json!({ "Namespace": NAMESPACE, "Dimensions": [["module"]], "Metrics": metrics }));
                }
                if let Some(task) = task {
                    root.insert("task".into(), Value::String(task.clone()));
                    if !durations.is_empty() {
                        root.insert(DURATION.into(), json!(durations));
                        directives.push(json!({
                            "Namespace": NAMESPACE,
                            "Dimensions": [["module", "task"]],
                            "Metrics": [{ "Name": DURATION, "Unit": "Milliseconds" }],
                        }));
                    }
                }
                root.insert(
                    "_aws".into(),
                    json!({ "Timestamp": at.timestamp_millis(), "CloudWatchMetrics": directives }),
                );
                documents.push(Value::Object(root));
            }
        }
        documents
    }
}

/// Where a batch's EMF lines go: stdout in Lambda (CloudWatch Logs reads them from there), a
/// capture in tests. Each line is written whole, so it never interleaves with a log line.
#[derive(Clone)]
pub struct MetricsSink {
    write: Arc<dyn Fn(&str) + Send + Sync>,
}

impl MetricsSink {
    /// Lines written by `write`, one call per line (without its newline).
    pub fn new(write: impl Fn(&str) + Send + Sync + 'static) -> Self {
        MetricsSink { write: Arc::new(write) }
    }

    /// Lines on the process's stdout.
    pub fn stdout() -> Self {
        MetricsSink::new(|line| {
            let mut text = String::with_capacity(line.len() + 1);
            text.push_str(line);
            text.push('\n');
            // A metric line that cannot be written is lost, like a log line; never fail a batch for it.
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        })
    }

    /// Writes the batch's documents, one JSON line each.
    pub fn emit(&self, metrics: &BatchMetrics) {
        for document in metrics.documents(Utc::now()) {
            (self.write)(&document.to_string());
        }
    }
}

impl fmt::Debug for MetricsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetricsSink")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const UNITS: [&str; 3] = ["Count", "Milliseconds", "None"];

    /// Checks a document against the EMF specification's rules (root `_aws` with an integer
    /// `Timestamp` and `CloudWatchMetrics`; each directive's namespace, dimension sets of at most
    /// 9 keys naming string members of the root, at most 100 metric definitions each naming a
    /// number or an array of at most 100 numbers on the root, and a CloudWatch unit).
    fn check_emf(document: &Value) -> Result<(), String> {
        let root = document.as_object().ok_or("the document is not an object")?;
        let aws = root.get("_aws").and_then(Value::as_object).ok_or("no `_aws` object")?;
        aws.get("Timestamp").and_then(Value::as_i64).ok_or("`_aws.Timestamp` is not an integer")?;
        let directives = aws.get("CloudWatchMetrics").and_then(Value::as_array).ok_or("no CloudWatchMetrics array")?;
        for directive in directives {
            let namespace = directive["Namespace"].as_str().ok_or("a directive has no Namespace")?;
            if namespace.is_empty() || namespace.len() > 255 {
                return Err(format!("bad namespace {namespace:?}"));
            }
            let sets = directive["Dimensions"].as_array().ok_or("a directive has no Dimensions")?;
            if sets.is_empty() {
                return Err("Dimensions is empty".into());
            }
            for set in sets {
                let keys = set.as_array().ok_or("a dimension set is not an array")?;
                if keys.len() > 9 {
                    return Err("a dimension set has over 9 keys".into());
                }
                for key in keys {
                    let key = key.as_str().ok_or("a dimension key is not a string")?;
                    if !root.get(key).is_some_and(Value::is_string) {
                        return Err(format!("dimension {key} is not a string member of the root"));
                    }
                }
            }
            let metrics = directive["Metrics"].as_array().ok_or("a directive has no Metrics")?;
            if metrics.len() > 100 {
                return Err("over 100 metric definitions".into());
            }
            for metric in metrics {
                let name = metric["Name"].as_str().ok_or("a metric has no Name")?;
                if let Some(unit) = metric.get("Unit")
                    && !unit.as_str().is_some_and(|u| UNITS.contains(&u))
                {
                    return Err(format!("metric {name} has unit {unit}"));
                }
                match root.get(name) {
                    Some(Value::Number(_)) => {}
                    Some(Value::Array(values)) if values.len() <= 100 && values.iter().all(Value::is_number) => {}
                    other => return Err(format!("metric {name} has no valid target on the root: {other:?}")),
                }
            }
        }
        Ok(())
    }

    fn tally(task: Option<&str>, outcome: Option<Outcome>, ms: Option<u64>) -> RecordTally {
        RecordTally { task: task.map(str::to_owned), duration: ms.map(Duration::from_millis), outcome }
    }

    #[test]
    fn a_batch_becomes_one_document_per_task_with_its_counts_and_durations() {
        let mut metrics = BatchMetrics::new("user");
        metrics.add(&tally(Some("t.a"), Some(Outcome::Succeeded), Some(12)), false);
        metrics.add(&tally(Some("t.a"), Some(Outcome::Retried), Some(30)), true);
        metrics.add(&tally(Some("t.b"), Some(Outcome::Failed), Some(7)), false);
        metrics.add(&tally(None, Some(Outcome::DeadLettered), None), false);
        metrics.add(&tally(Some("t.b"), None, None), true); // busy elsewhere: handed back unrun
        let at = DateTime::from_timestamp_millis(1_764_756_000_123).unwrap();
        let documents = metrics.documents(at);
        assert_eq!(documents.len(), 3, "{documents:#?}");
        for document in &documents {
            check_emf(document).unwrap_or_else(|e| panic!("{e}: {document}"));
            assert_eq!(document["_aws"]["Timestamp"], 1_764_756_000_123_i64);
            assert_eq!(document["_aws"]["CloudWatchMetrics"][0]["Namespace"], NAMESPACE);
            assert_eq!(document["module"], "user");
        }
        let find = |task: Option<&str>| {
            documents.iter().find(|d| d.get("task").and_then(Value::as_str) == task).unwrap().clone()
        };
        let a = find(Some("t.a"));
        assert_eq!(
            (a["TasksSucceeded"].as_u64(), a["TasksRetried"].as_u64(), a["TasksFailed"].as_u64()),
            (Some(1), Some(1), Some(0))
        );
        assert_eq!(a["RecordsHandedBack"], 1);
        assert_eq!(a["TaskDuration"], json!([12.0, 30.0]));
        assert_eq!(a["_aws"]["CloudWatchMetrics"][1]["Dimensions"], json!([["module", "task"]]));
        assert_eq!(a["_aws"]["CloudWatchMetrics"][1]["Metrics"][0]["Unit"], "Milliseconds");
        let b = find(Some("t.b"));
        assert_eq!((b["TasksFailed"].as_u64(), b["RecordsHandedBack"].as_u64()), (Some(1), Some(1)));
        assert_eq!(b["TaskDuration"], json!([7.0]));
        // Records of no known task: counts only, no task dimension.
        let none = find(None);
        assert_eq!(none["TasksDeadLettered"], 1);
        assert!(none.get("TaskDuration").is_none());
        assert_eq!(none["_aws"]["CloudWatchMetrics"].as_array().unwrap().len(), 1);
        assert_eq!(none["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["module"]]));
    }

    #[test]
    fn over_a_hundred_runs_of_a_task_split_into_documents_with_the_counts_once() {
        let mut metrics = BatchMetrics::new("m");
        for i in 0..250 {
            metrics.add(&tally(Some("t"), Some(Outcome::Succeeded), Some(i)), false);
        }
        let documents = metrics.documents(Utc::now());
        assert_eq!(documents.len(), 3);
        let sizes: Vec<usize> = documents.iter().map(|d| d["TaskDuration"].as_array().unwrap().len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let succeeded: u64 = documents.iter().filter_map(|d| d["TasksSucceeded"].as_u64()).sum();
        assert_eq!(succeeded, 250);
        for document in &documents {
            check_emf(document).unwrap_or_else(|e| panic!("{e}: {document}"));
        }
    }

    #[test]
    fn an_empty_batch_writes_nothing_and_the_checker_catches_bad_documents() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let lines = lines.clone();
            MetricsSink::new(move |line| lines.lock().unwrap().push(line.to_owned()))
        };
        let metrics = BatchMetrics::new("m");
        assert!(metrics.is_empty());
        sink.emit(&metrics);
        assert!(lines.lock().unwrap().is_empty());

        // The checker is what the tests above rely on: it must refuse what the spec refuses.
        let mut good = BatchMetrics::new("m");
        good.add(&tally(Some("t"), Some(Outcome::Succeeded), Some(3)), false);
        sink.emit(&good);
        let written: Value = serde_json::from_str(&lines.lock().unwrap()[0]).unwrap();
        check_emf(&written).unwrap();
        let mut missing_dimension = written.clone();
        missing_dimension.as_object_mut().unwrap().remove("task");
        assert!(check_emf(&missing_dimension).is_err());
        let mut text_value = written.clone();
        text_value["TasksSucceeded"] = json!("1");
        assert!(check_emf(&text_value).is_err());
        let mut too_many = written;
        too_many["TaskDuration"] = json!(vec![1.0; 101]);
        assert!(check_emf(&too_many).is_err());
    }
}
