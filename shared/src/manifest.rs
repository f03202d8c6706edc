//! The manifest, `taskbeat.toml`: what `celeryconfig.py` was. Modules (one Lambda each) with
//! their queues, routes (globs on task names, as `CELERY_ROUTES`), and queue settings.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::queue::DEFAULT_MAX_MESSAGE_BYTES;

/// A manifest that cannot be used, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The file cannot be read.
    #[error("cannot read manifest {path}: {message}")]
    Read {
        /// The path.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The TOML does not parse or has a wrong field (the message carries the line).
    #[error("manifest {origin}: {message}")]
    Syntax {
        /// Where it came from.
        origin: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The content is inconsistent.
    #[error("manifest {origin}: {message}\n  hint: {hint}")]
    Invalid {
        /// Where it came from.
        origin: String,
        /// What is wrong.
        message: String,
        /// What to do.
        hint: String,
    },
}

/// Project-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    /// Prefix of AWS resource names (`{name}-{queue}`, `{name}-tasks`).
    pub name: String,
    /// The queue of a task no route matches (Celery's `task_default_queue`).
    #[serde(default = "default_queue")]
    pub default_queue: String,
    /// The DynamoDB table; `{name}-tasks` when absent.
    #[serde(default)]
    pub table: Option<String>,
}

fn default_queue() -> String {
    "default".to_owned()
}

/// One task module: a function crate, deployed as one Lambda on its own queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    /// The function crate.
    #[serde(rename = "crate")]
    pub crate_name: String,
    /// The queue it consumes.
    pub queue: String,
    /// Records per batch (SQS event source batch size).
    #[serde(default = "default_batch_size")]
    pub batch_size: u16,
    /// Function timeout, seconds.
    #[serde(default = "default_timeout")]
    pub timeout: u32,
    /// Function memory, MB.
    #[serde(default = "default_memory")]
    pub memory: u32,
    /// Batches running at once (event source maximum concurrency; local pollers).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u16,
    /// Seconds the event source gathers records before invoking (SQS batching window, 0-300).
    #[serde(default)]
    pub batching_window: u16,
    /// Environment variables its tasks need (`APP_API_BASE`): required template parameters.
    #[serde(default)]
    pub settings: Vec<String>,
    /// Variables with a default in the module's code: parameters left empty leave them unset.
    #[serde(default)]
    pub optional_settings: Vec<String>,
    /// Settings that are secrets: deployed from Secrets Manager, never as plain parameters.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Queues its tasks send child tasks to (`ctx.send`): the template grants sending there.
    #[serde(default)]
    pub sends_to: Vec<String>,
    /// Its tasks read the depth of every queue and DLQ: the template grants exactly that.
    #[serde(default)]
    pub inspects_queues: bool,
}

fn default_batch_size() -> u16 {
    10
}
fn default_timeout() -> u32 {
    60
}
fn default_memory() -> u32 {
    256
}
fn default_max_concurrency() -> u16 {
    4
}

impl Module {
    /// The function timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.timeout))
    }

    /// How long a received message stays hidden: six times the timeout plus the batching
    /// window, as AWS advises for Lambda event sources.
    pub fn visibility_timeout(&self) -> Duration {
        self.timeout() * 6 + Duration::from_secs(u64::from(self.batching_window))
    }
}

/// Settings of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// Receives after which a message moves to the DLQ.
    #[serde(default = "default_max_receive_count")]
    pub max_receive_count: u32,
    /// Largest body, bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// A FIFO queue (SQS name ending in `.fifo`): order kept per message group (by default the
    /// task name), duplicates of a task id within five minutes dropped, no countdown or eta.
    #[serde(default)]
    pub fifo: bool,
    /// The Celery queue this queue serves (`queue=` of `send_task`, `task_routes`): the SQS
    /// queue is then named as kombu's SQS transport looks it up, from this name and
    /// `celery_queue_name_prefix`, instead of `{project}-{queue}`.
    #[serde(default)]
    pub celery_queue: Option<String>,
    /// The `queue_name_prefix` of the producer's `broker_transport_options`.
    #[serde(default)]
    pub celery_queue_name_prefix: String,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_receive_count: default_max_receive_count(),
            max_message_bytes: default_max_message_bytes(),
            fifo: false,
            celery_queue: None,
            celery_queue_name_prefix: String::new(),
        }
    }
}

fn default_max_receive_count() -> u32 {
    10
}
fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}

/// A route: tasks whose name matches the glob go to the queue (`CELERY_ROUTES`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Glob on the task name (`app.schedules.user_task.*`).
    pub pattern: String,
    /// Target queue.
    pub queue: String,
}

/// A crontab field as Celery takes it: a number, a string (`"*/10"`, `"mon-fri"`, `"0,30"`), or
/// a list of numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronField {
    /// A single number.
    Number(i64),
    /// Celery's string syntax.
    Text(String),
    /// A list of numbers (Celery takes any iterable of ints).
    List(Vec<i64>),
}

impl<'de> Deserialize<'de> for CronField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CronField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number, a Celery crontab string such as \"*/10\" or \"mon-fri\", or a list of numbers")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<CronField, E> {
                Ok(CronField::Number(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<CronField, E> {
                i64::try_from(v).map(CronField::Number).map_err(|_| E::custom("number too large"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CronField, E> {
                Ok(CronField::Text(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<CronField, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<i64>()? {
                    values.push(v);
                }
                Ok(CronField::List(values))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// An interval schedule: seconds, or a number with a unit (`"90s"`, `"5m"`, `"1h"`, `"1d"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interval {
    /// Seconds.
    Seconds(i64),
    /// A number with a unit.
    Text(String),
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Interval;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("seconds (300) or a number with a unit (\"5m\", \"1h\", \"1d\")")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Interval, E> {
                Ok(Interval::Seconds(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Interval, E> {
                i64::try_from(v).map(Interval::Seconds).map_err(|_| E::custom("number too large"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Interval, E> {
                Ok(Interval::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A beat schedule (one `CELERYBEAT_SCHEDULE` entry), deployed as an EventBridge rule.
/// Exactly one of: Celery's crontab fields, a raw EventBridge `expression`, or `every`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// The task to send.
    pub task: String,
    /// Its positional arguments.
    #[serde(default)]
    pub args: Vec<serde_json::Value>,
    /// Its keyword arguments.
    #[serde(default)]
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    /// Celery `crontab(minute=...)`.
    #[serde(default)]
    pub minute: Option<CronField>,
    /// Celery `crontab(hour=...)`.
    #[serde(default)]
    pub hour: Option<CronField>,
    /// Celery `crontab(day_of_week=...)` (0-6, Sunday = 0, names accepted).
    #[serde(default)]
    pub day_of_week: Option<CronField>,
    /// Celery `crontab(day_of_month=...)`.
    #[serde(default)]
    pub day_of_month: Option<CronField>,
    /// Celery `crontab(month_of_year=...)`.
    #[serde(default)]
    pub month_of_year: Option<CronField>,
    /// A raw EventBridge schedule expression: `cron(...)` or `rate(...)`.
    #[serde(default)]
    pub expression: Option<String>,
    /// An interval (Celery's `schedule=timedelta(...)`).
    #[serde(default)]
    pub every: Option<Interval>,
    /// The schedule's time zone; rules run in UTC, so only UTC is accepted.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Deployed enabled (true) or disabled.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Queue to send to instead of the task's route.
    #[serde(default)]
    pub queue: Option<String>,
}

fn enabled_by_default() -> bool {
    true
}

/// The parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Project settings.
    pub project: Project,
    /// Modules by name.
    #[serde(default)]
    pub modules: BTreeMap<String, Module>,
    /// Queue settings by queue name (defaults apply to queues not listed).
    #[serde(default)]
    pub queues: BTreeMap<String, QueueSettings>,
    /// Routes, first match wins.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Beat schedules by name.
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleSpec>,
    /// Celery compatibility: where results are written for `AsyncResult`.
    #[serde(default)]
    pub celery: Option<crate::celery::CelerySettings>,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ManifestError::Read { path: path.display().to_string(), message: e.to_string() })?;
        Manifest::parse(&text, &path.display().to_string())
    }

    /// Parses and validates manifest text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text)
            .map_err(|e| ManifestError::Syntax { origin: origin.to_owned(), message: e.to_string() })?;
        manifest.validate(origin)?;
        manifest.validate_schedules(origin, text)?;
        manifest.validate_celery(origin, text)?;
        Ok(manifest)
    }

    /// Celery queue names must make valid SQS names the way kombu derives them, and the
    /// `[celery]` result settings must be usable. An error names its line in `text`.
    fn validate_celery(&self, origin: &str, text: &str) -> Result<(), ManifestError> {
        let fail = |section: Section<'_>, field: Option<&str>, message: String, hint: &str| {
            let line = key_line(text, section, field).map(|l| format!("line {l}: ")).unwrap_or_default();
            ManifestError::Invalid {
                origin: origin.to_owned(),
                message: format!("{line}{message}"),
                hint: hint.to_owned(),
            }
        };
        let mut names: BTreeMap<String, &str> = BTreeMap::new();
        for queue in self.queue_names() {
            let name = self.sqs_queue_name(queue);
            let settings = self.queue_settings(queue);
            if let Some(celery_queue) = &settings.celery_queue {
                crate::celery::naming::check_sqs_queue_name(&name, settings.fifo).map_err(|e| {
                    // Point at the prefix when it is what breaks the name.
                    let prefix = crate::celery::naming::entity_name(&settings.celery_queue_name_prefix);
                    let prefix_at_fault = !prefix.is_empty()
                        && (matches!(e, crate::celery::naming::QueueNameError::TooLong { .. })
                            || prefix.chars().any(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')));
                    let field = if prefix_at_fault { "celery_queue_name_prefix" } else { "celery_queue" };
                    fail(
                        Section::Queue(queue),
                        Some(field),
                        format!("[queues.{queue}] celery_queue {celery_queue:?}: kombu would look up {e}"),
                        "kombu keeps letters, digits, `-` and `_`, turns `.` into `-` and other ASCII punctuation \
                         into `_`; the prefix and name together stay within 80 characters, and a FIFO queue \
                         (`fifo = true`) is a Celery queue name ending in `.fifo`",
                    )
                })?;
            }
            if let Some(other) = names.insert(name.clone(), queue) {
                return Err(fail(
                    Section::Queue(queue),
                    Some("celery_queue"),
                    format!("queues `{other}` and `{queue}` would both be the SQS queue `{name}`"),
                    "give each queue its own Celery queue name",
                ));
            }
        }
        let Some(celery) = &self.celery else { return Ok(()) };
        if let Some(form) = &celery.result_key {
            crate::celery::results::KeyForm::parse(form).map_err(|e| {
                fail(
                    Section::Celery,
                    Some("result_key"),
                    format!("[celery] {e}"),
                    "check the key your Celery version writes: celery/backends/base.py get_key_for_task \
                     and celery/backends/dynamodb.py set",
                )
            })?;
        }
        let table = self.celery_results_table();
        if !(3..=255).contains(&table.len()) || !table.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return Err(fail(
                Section::Celery,
                Some("results_table"),
                format!("[celery] results_table `{table}` is not a DynamoDB table name"),
                "use 3 to 255 letters, digits, `_`, `-` and `.`, as in the backend URL dynamodb://@REGION/TABLE",
            ));
        }
        if celery.result_expires == Some(0) {
            return Err(fail(
                Section::Celery,
                Some("result_expires"),
                "[celery] result_expires = 0: items would expire as they are written".into(),
                "set the backend URL's ttl_seconds (e.g. 86400), or leave result_expires out for no expiry",
            ));
        }
        Ok(())
    }

    /// The table of Celery results: `[celery] results_table`, else `{project}-celery-results`.
    pub fn celery_results_table(&self) -> String {
        self.celery
            .as_ref()
            .and_then(|c| c.results_table.clone())
            .unwrap_or_else(|| format!("{}-celery-results", self.project.name))
    }

    /// Where Celery results are written, when `[celery] results = true`.
    pub fn celery_results(&self) -> Option<crate::celery::results::ResultBackendConfig> {
        let celery = self.celery.as_ref().filter(|c| c.results)?;
        Some(crate::celery::results::ResultBackendConfig {
            table: self.celery_results_table(),
            // Checked when the manifest loaded.
            key: celery
                .result_key
                .as_deref()
                .and_then(|form| crate::celery::results::KeyForm::parse(form).ok())
                .unwrap_or_default(),
            expires: celery.result_expires.map(Duration::from_secs),
            extended: celery.result_extended,
            celery_queues: self
                .queues
                .iter()
                .filter_map(|(name, settings)| Some((name.clone(), settings.celery_queue.clone()?)))
                .collect(),
        })
    }

    /// Every schedule must become an EventBridge rule and send to a queue a module consumes.
    /// An error names the schedule and its line in `text`.
    fn validate_schedules(&self, origin: &str, text: &str) -> Result<(), ManifestError> {
        let consumed = self.queue_names();
        for (name, spec) in &self.schedules {
            let fail = |field: Option<&str>, message: String, hint: &str| {
                let line = schedule_line(text, name, field).map(|l| format!("line {l}: ")).unwrap_or_default();
                ManifestError::Invalid {
                    origin: origin.to_owned(),
                    message: format!("{line}schedule `{name}`: {message}"),
                    hint: hint.to_owned(),
                }
            };
            let rule = self.rule_name(name);
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                || rule.len() > 64
            {
                return Err(fail(
                    None,
                    format!("its rule name `{rule}` is not a valid EventBridge rule name"),
                    "name schedules with letters, digits, `.`, `_` and `-`, \
                     so that `{project}-{schedule}` stays within 64 characters",
                ));
            }
            if spec.task.trim().is_empty() || spec.task.chars().any(char::is_whitespace) {
                return Err(fail(
                    Some("task"),
                    format!("task {:?} is not a task name", spec.task),
                    "set `task` to a registered task's Celery name, e.g. \"app.schedules.alert.check_queues\"",
                ));
            }
            let queue = spec.queue.as_deref().unwrap_or_else(|| self.route(&spec.task));
            if !consumed.contains(&queue) {
                let field = if spec.queue.is_some() { "queue" } else { "task" };
                return Err(fail(
                    Some(field),
                    format!("task `{}` would go to queue `{queue}`, which no module consumes", spec.task),
                    "send it to a module's queue: fix `queue` in the schedule, or the task's [[routes]]",
                ));
            }
            crate::schedule::eventbridge_expression(spec).map_err(|e| fail(e.field, e.problem, &e.hint))?;
        }
        Ok(())
    }

    fn validate(&self, origin: &str) -> Result<(), ManifestError> {
        let invalid = |message: String, hint: &str| ManifestError::Invalid {
            origin: origin.to_owned(),
            message,
            hint: hint.to_owned(),
        };
        if self.modules.is_empty() {
            return Err(invalid("no modules".into(), "add a [modules.NAME] table with `crate` and `queue`"));
        }
        let mut consumers: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, module) in &self.modules {
            if module.queue.trim().is_empty() {
                return Err(invalid(
                    format!("module `{name}` has an empty queue"),
                    "set `queue = \"NAME\"` in the module",
                ));
            }
            if let Some(other) = consumers.insert(&module.queue, name) {
                return Err(invalid(
                    format!("modules `{other}` and `{name}` both consume queue `{}`", module.queue),
                    "each module has its own queue; give one of them another",
                ));
            }
            if !(1..=10_000).contains(&module.batch_size) {
                return Err(invalid(
                    format!("module `{name}`: batch_size {} is out of 1..=10000", module.batch_size),
                    "use 10 unless you measured otherwise",
                ));
            }
            if module.batching_window > 300 {
                return Err(invalid(
                    format!("module `{name}`: batching_window {} s is over SQS's 300", module.batching_window),
                    "use 0 to invoke as soon as records arrive, at most 300",
                ));
            }
            if !(1..=900).contains(&module.timeout) {
                return Err(invalid(
                    format!("module `{name}`: timeout {} s is out of Lambda's 1..=900", module.timeout),
                    "lower the timeout",
                ));
            }
        }
        for queue in self.queues.keys() {
            if !consumers.contains_key(queue.as_str()) {
                return Err(invalid(
                    format!("[queues.{queue}] is not consumed by any module"),
                    "set a module's `queue` to it, or remove the table",
                ));
            }
        }
        if !consumers.contains_key(self.project.default_queue.as_str()) {
            return Err(invalid(
                format!("default_queue `{}` is not consumed by any module", self.project.default_queue),
                "set [project] default_queue to a module's queue",
            ));
        }
        for route in &self.routes {
            glob::Pattern::new(&route.pattern).map_err(|e| {
                invalid(
                    format!("route pattern `{}` is not a glob: {e}", route.pattern),
                    "use `*` and `?`, as in app.schedules.alert.*",
                )
            })?;
            if !consumers.contains_key(route.queue.as_str()) {
                return Err(invalid(
                    format!("route `{}` goes to queue `{}`, which no module consumes", route.pattern, route.queue),
                    "route to a module's queue",
                ));
            }
        }
        Ok(())
    }

    /// The queue a task goes to: the first matching route, else the default queue.
    pub fn route(&self, task: &str) -> &str {
        self.routes
            .iter()
            .find(|r| glob::Pattern::new(&r.pattern).is_ok_and(|p| p.matches(task)))
            .map_or(self.project.default_queue.as_str(), |r| r.queue.as_str())
    }

    /// Every queue (one per module), sorted.
    pub fn queue_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.modules.values().map(|m| m.queue.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// A queue's settings.
    pub fn queue_settings(&self, queue: &str) -> QueueSettings {
        self.queues.get(queue).cloned().unwrap_or_default()
    }

    /// The module consuming a queue.
    pub fn module_for_queue(&self, queue: &str) -> Option<(&str, &Module)> {
        self.modules.iter().find(|(_, m)| m.queue == queue).map(|(n, m)| (n.as_str(), m))
    }

    /// The DynamoDB table name.
    pub fn table_name(&self) -> String {
        self.project.table.clone().unwrap_or_else(|| format!("{}-tasks", self.project.name))
    }

    /// A queue's SQS name: `{project}-{queue}`, or for a queue serving a Celery queue the name
    /// kombu's SQS transport looks up.
    pub fn sqs_queue_name(&self, queue: &str) -> String {
        let settings = self.queue_settings(queue);
        if let Some(celery_queue) = &settings.celery_queue {
            return crate::celery::naming::kombu_queue_name(&settings.celery_queue_name_prefix, celery_queue);
        }
        let fifo = if settings.fifo { ".fifo" } else { "" };
        format!("{}-{queue}{fifo}", self.project.name)
    }

    /// A schedule's EventBridge rule name.
    pub fn rule_name(&self, schedule: &str) -> String {
        format!("{}-{schedule}", self.project.name)
    }

    /// A queue's DLQ name on SQS.
    pub fn sqs_dlq_name(&self, queue: &str) -> String {
        // A FIFO queue's dead-letter queue must be FIFO too.
        let fifo = if self.queue_settings(queue).fifo { ".fifo" } else { "" };
        format!("{}-{queue}-dlq{fifo}", self.project.name)
    }
}

/// The line (1-based) of a schedule's `field` in manifest text, or of its table when the field
/// is absent or not given.
fn schedule_line(text: &str, name: &str, field: Option<&str>) -> Option<usize> {
    key_line(text, Section::Schedule(name), field)
}

/// A table of the manifest that an error can point at.
#[derive(Debug, Clone, Copy)]
enum Section<'a> {
    /// `[schedules.NAME]`.
    Schedule(&'a str),
    /// `[queues.NAME]`.
    Queue(&'a str),
    /// `[celery]`.
    Celery,
}

/// The line (1-based) of `field` in a table of the manifest text, or of the table when the
/// field is absent or not given. The manifest is parsed a second time, keeping spans, only when
/// an error needs a line.
fn key_line(text: &str, section: Section<'_>, field: Option<&str>) -> Option<usize> {
    type Fields = BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>;
    #[derive(Deserialize)]
    struct Spans {
        #[serde(default)]
        schedules: BTreeMap<toml::Spanned<String>, Fields>,
        #[serde(default)]
        queues: BTreeMap<toml::Spanned<String>, Fields>,
        #[serde(default)]
        celery: Option<Fields>,
    }
    let spans: Spans = toml::from_str(text).ok()?;
    let line_of = |offset: usize| Some(text.get(..offset)?.matches('\n').count() + 1);
    let in_fields = |fields: &Fields| {
        field.and_then(|field| fields.iter().find(|(k, _)| k.get_ref() == field)).map(|(k, _)| k.span().start)
    };
    let table = |tables: &BTreeMap<toml::Spanned<String>, Fields>, name: &str| {
        let (key, fields) = tables.iter().find(|(key, _)| key.get_ref() == name)?;
        line_of(in_fields(fields).unwrap_or(key.span().start))
    };
    match section {
        Section::Schedule(name) => table(&spans.schedules, name),
        Section::Queue(name) => table(&spans.queues, name),
        Section::Celery => match spans.celery.as_ref().and_then(in_fields) {
            Some(offset) => line_of(offset),
            None => text.lines().position(|l| l.trim_start().starts_with("[celery]")).map(|l| l + 1),
        },
    }
}

/// The dead-letter queue's name of an embedded queue.
pub fn embedded_dlq_name(queue: &str) -> String {
    format!("{queue}-dlq")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[project]
name = "tb"

[modules.user]
crate = "taskbeat-user"
queue = "default"

[modules.alert]
crate = "taskbeat-alert"
queue = "alerts"

[[routes]]
pattern = "app.schedules.alert.*"
queue = "alerts"
"#;

    #[test]
    fn routes_by_glob_with_default() {
        let m = Manifest::parse(MINIMAL, "test").unwrap();
        assert_eq!(m.route("app.schedules.alert.check_health"), "alerts");
        assert_eq!(m.route("app.schedules.user_task.process_users"), "default");
        assert_eq!(m.table_name(), "tb-tasks");
        assert_eq!(m.sqs_dlq_name("alerts"), "tb-alerts-dlq");
    }

    #[test]
    fn reports_mistakes_with_a_hint() {
        let bad_route = MINIMAL.replace("queue = \"alerts\"\n\"#", "queue = \"nft\"\n\"#").replace(
            "[[routes]]\npattern = \"app.schedules.alert.*\"\nqueue = \"alerts\"",
            "[[routes]]\npattern = \"app.schedules.alert.*\"\nqueue = \"nft\"",
        );
        let err = Manifest::parse(&bad_route, "test").unwrap_err().to_string();
        assert!(err.contains("no module consumes") && err.contains("hint"), "{err}");

        let no_queue = "[project]\nname = \"tb\"\n[modules.user]\ncrate = \"x\"\n";
        let err = Manifest::parse(no_queue, "test").unwrap_err().to_string();
        assert!(err.contains("missing field `queue`") && err.contains("line"), "{err}");

        let typo = MINIMAL.replace("crate = \"taskbeat-user\"", "crate = \"taskbeat-user\"\nqeue = 1");
        let err = Manifest::parse(&typo, "test").unwrap_err().to_string();
        assert!(err.contains("qeue"), "{err}");
    }

    /// Parses MINIMAL plus a schedule; returns the error and the line `marker` starts on.
    fn schedule_error(schedule: &str, marker: &str) -> (String, usize) {
        let text = format!("{MINIMAL}\n{schedule}");
        let line = text.lines().position(|l| l.starts_with(marker)).unwrap() + 1;
        (Manifest::parse(&text, "taskbeat.toml").unwrap_err().to_string(), line)
    }

    #[test]
    fn schedule_mistakes_name_the_schedule_and_its_line() {
        let task = "task = \"app.schedules.alert.check_queues\"\n";
        let (err, line) = schedule_error(&format!("[schedules.tick]\n{task}minute = \"*/0\"\n"), "minute");
        assert!(err.contains(&format!("line {line}: schedule `tick`: minute = \"*/0\"")), "{err}");
        assert!(err.contains("hint: Celery takes e.g."), "{err}");

        let (err, line) =
            schedule_error(&format!("[schedules.tick]\n{task}expression = \"cron(0 8 * * *)\"\n"), "expression");
        assert!(err.contains(&format!("line {line}: schedule `tick`: expression")) && err.contains("year"), "{err}");

        let (err, line) = schedule_error(&format!("[schedules.tick]\n{task}every = \"90s\"\n"), "every");
        assert!(err.contains(&format!("line {line}:")) && err.contains("whole minutes"), "{err}");

        let (err, line) =
            schedule_error(&format!("[schedules.tick]\n{task}hour = 9\ntimezone = \"Europe/Paris\"\n"), "timezone");
        assert!(err.contains(&format!("line {line}:")) && err.contains("UTC only"), "{err}");

        let (err, line) = schedule_error(&format!("[schedules.tick]\n{task}"), "[schedules.tick]");
        assert!(err.contains(&format!("line {line}: schedule `tick`: says neither")), "{err}");

        let (err, line) = schedule_error(
            "[schedules.tick]\ntask = \"app.schedules.alert.check_queues\"\nqueue = \"nft\"\nminute = 0\n",
            "queue = \"nft\"",
        );
        assert!(
            err.contains(&format!("line {line}:")) && err.contains("queue `nft`, which no module consumes"),
            "{err}"
        );

        let (err, _) =
            schedule_error("[schedules.tick]\ntask = \"app.schedules.alert.check_queues\"\nminute = -1\n", "minute");
        assert!(err.contains("minute = -1: -1 is outside 0-59"), "{err}");
        let (err, _) = schedule_error("[schedules.tick]\ntask = \"x.y\"\nminute = 1.5\n", "minute");
        assert!(err.contains("a Celery crontab string") && err.contains("line"), "{err}");
        let (err, _) = schedule_error("[schedules.\"bad name\"]\ntask = \"x.y\"\nminute = 1\n", "[schedules");
        assert!(err.contains("not a valid EventBridge rule name"), "{err}");
    }

    /// Parses MINIMAL plus `extra`; returns the error and the line `marker` starts on.
    fn celery_error(extra: &str, marker: &str) -> (String, usize) {
        let text = format!("{MINIMAL}\n{extra}");
        let line = text.lines().position(|l| l.starts_with(marker)).unwrap() + 1;
        (Manifest::parse(&text, "taskbeat.toml").unwrap_err().to_string(), line)
    }

    #[test]
    fn celery_queues_are_named_as_kombu_looks_them_up() {
        let text = format!(
            "{MINIMAL}\n[queues.alerts]\ncelery_queue = \"alerts.high\"\ncelery_queue_name_prefix = \"prod:\"\n"
        );
        let m = Manifest::parse(&text, "test").unwrap();
        assert_eq!(m.sqs_queue_name("alerts"), "prod_alerts-high");
        assert_eq!(m.sqs_dlq_name("alerts"), "tb-alerts-dlq");
        assert_eq!(m.sqs_queue_name("default"), "tb-default");

        let (err, line) =
            celery_error("[queues.alerts]\nmax_receive_count = 3\ncelery_queue = \"alerts high\"\n", "celery_queue");
        assert!(err.contains(&format!("line {line}: [queues.alerts] celery_queue")) && err.contains("' '"), "{err}");
        assert!(err.contains("hint: kombu keeps"), "{err}");
        let long = "q".repeat(75);
        let (err, line) = celery_error(
            &format!("[queues.alerts]\ncelery_queue = \"{long}\"\ncelery_queue_name_prefix = \"prod-x-\"\n"),
            "celery_queue_name_prefix",
        );
        assert!(err.contains(&format!("line {line}:")) && err.contains("82 characters"), "{err}");
        let (err, line) = celery_error("[queues.alerts]\ncelery_queue = \"jobs.fifo\"\n", "celery_queue");
        assert!(err.contains(&format!("line {line}:")) && err.contains("not FIFO"), "{err}");
        let (err, _) = celery_error("[queues.alerts]\ncelery_queue = \"tb-default\"\n", "celery_queue");
        assert!(err.contains("would both be the SQS queue `tb-default`"), "{err}");
    }

    #[test]
    fn celery_result_settings_are_checked() {
        let m = Manifest::parse(&format!("{MINIMAL}\n[celery]\nresults = true\n"), "test").unwrap();
        let config = m.celery_results().unwrap();
        assert_eq!(config.table, "tb-celery-results");
        assert_eq!(config.key.as_str(), crate::celery::results::DEFAULT_KEY_FORM);
        assert_eq!((config.expires, config.extended), (None, false));
        assert!(Manifest::parse(MINIMAL, "test").unwrap().celery_results().is_none());

        let (err, line) = celery_error("[celery]\nresults = true\nresult_key = \"celery-task-meta-\"\n", "result_key");
        assert!(err.contains(&format!("line {line}: [celery] Celery result key form")), "{err}");
        let (err, line) = celery_error("[celery]\nresults = true\nresults_table = \"a b\"\n", "results_table");
        assert!(err.contains(&format!("line {line}:")) && err.contains("not a DynamoDB table name"), "{err}");
        let (err, line) = celery_error("[celery]\nresults = true\nresult_expires = 0\n", "result_expires");
        assert!(err.contains(&format!("line {line}:")) && err.contains("ttl_seconds"), "{err}");
        let (err, _) = celery_error("[celery]\nresult = true\n", "[celery]");
        assert!(err.contains("unknown field `result`") && err.contains("line"), "{err}");
    }

    #[test]
    fn the_repos_manifest_schedules_convert() {
        let manifest = Manifest::parse(include_str!("../../taskbeat.toml"), "taskbeat.toml").unwrap();
        let expressions: BTreeMap<&str, String> = manifest
            .schedules
            .iter()
            .map(|(name, spec)| (name.as_str(), crate::schedule::eventbridge_expression(spec).unwrap()))
            .collect();
        assert_eq!(expressions["check_health"], "rate(5 minutes)");
        assert_eq!(expressions["check_queues"], "cron(0/10 * * * ? *)");
        assert_eq!(expressions["cleanup_inactive_users"], "cron(0 3 * * ? *)");
        assert_eq!(expressions["refresh_collection"], "cron(7 * * * ? *)");
    }
}
