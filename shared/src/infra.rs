//! The deployable infrastructure: an AWS SAM template rendered from the manifest.
//!
//! Per module: a Lambda function (built by cargo-lambda through SAM's `rust-cargolambda`
//! build method), its queue and dead-letter queue, its SQS trigger, its log group and a
//! least-privilege role. Shared: the task table. Per schedule: an EventBridge rule whose
//! target is the queue the task routes to, with an input transformer that turns every firing
//! into a fresh envelope. Resource names are the ones the runtime and the CLI look up
//! ([`Manifest::sqs_queue_name`], [`Manifest::sqs_dlq_name`], [`Manifest::table_name`],
//! [`Manifest::rule_name`]), so they are set explicitly.
//!
//! The template is built as an ordered tree ([`Node`]) and written by a small YAML emitter
//! ([`yaml`]): the same manifest always gives the same bytes, which `taskbeat infra render
//! --check` relies on.

pub mod yaml;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::lambda::{ENV_CELERY_RESULTS_TABLE, ENV_DLQ_URL, ENV_QUEUE, ENV_TABLE, ENV_TIME_LIMIT};
use crate::manifest::{Manifest, Module, ScheduleSpec};
use crate::schedule::eventbridge_expression;
use crate::store::dynamodb::{HASH_KEY, INDEXES, TTL_ATTRIBUTE};

/// The Lambda runtime of every function: an OS-only runtime running the `bootstrap` binary.
pub const LAMBDA_RUNTIME: &str = "provided.al2023";
/// The Lambda architecture (Graviton).
pub const LAMBDA_ARCHITECTURE: &str = "arm64";
/// SAM's build method for Rust functions (cargo-lambda).
pub const BUILD_METHOD: &str = "rust-cargolambda";
/// How long a dead letter is kept: SQS's maximum, 14 days, so operators have time to look.
pub const DLQ_RETENTION_SECONDS: i64 = 14 * 24 * 3600;
/// How long a task message waits on its queue: SQS's default, 4 days.
pub const QUEUE_RETENTION_SECONDS: i64 = 4 * 24 * 3600;
/// The longest input template EventBridge accepts, characters.
pub const MAX_INPUT_TEMPLATE_CHARS: usize = 8192;
/// The `origin` of envelopes a schedule sends: this prefix and the rule's name.
pub const SCHEDULE_ORIGIN_PREFIX: &str = "eventbridge:";
/// DynamoDB actions the runtime's store uses on items (see `store::dynamodb`).
pub const TABLE_ITEM_ACTIONS: [&str; 3] = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"];
/// SQS actions an event source mapping needs on the queue it polls.
pub const CONSUME_ACTIONS: [&str; 4] =
    ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"];

/// The first lines of the rendered file.
pub const HEADER: &str = "\
# Rendered from taskbeat.toml by `taskbeat infra render`: do not edit by hand.
# After changing the manifest, run `taskbeat infra render` and commit both files.
";

/// Why the manifest cannot become a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InfraError {
    /// A schedule whose expression or target cannot be deployed.
    #[error("schedule `{schedule}`: {message}")]
    Schedule {
        /// The schedule's name in the manifest.
        schedule: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A manifest value AWS would refuse, with what to do.
    #[error("{message}\n  hint: {hint}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// What to do.
        hint: String,
    },
}

fn invalid(message: impl Into<String>, hint: impl Into<String>) -> InfraError {
    InfraError::Invalid { message: message.into(), hint: hint.into() }
}

/// A template value. Mappings keep their order, so rendering is deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A string.
    Str(String),
    /// A whole number.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in order.
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The same tree as JSON (mapping order is lost: JSON objects here are sorted).
    pub fn to_json(&self) -> Value {
        match self {
            Node::Str(s) => Value::String(s.clone()),
            Node::Int(i) => Value::from(*i),
            Node::Bool(b) => Value::Bool(*b),
            Node::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Node::Map(entries) => Value::Object(entries.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }
}

fn s(v: impl Into<String>) -> Node {
    Node::Str(v.into())
}

fn int(v: impl Into<i64>) -> Node {
    Node::Int(v.into())
}

fn map<const N: usize>(entries: [(&str, Node); N]) -> Node {
    Node::Map(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn strs<'a>(items: impl IntoIterator<Item = &'a str>) -> Node {
    Node::Seq(items.into_iter().map(s).collect())
}

fn reference(id: &str) -> Node {
    map([("Ref", s(id))])
}

fn get_att(id: &str, attribute: &str) -> Node {
    map([("Fn::GetAtt", strs([id, attribute]))])
}

fn sub(text: impl Into<String>) -> Node {
    map([("Fn::Sub", s(text))])
}

/// A checkov suppression: the check's id and why it does not apply, kept in the template.
fn checkov_skips(skips: &[(&str, &str)]) -> Node {
    let skips = skips.iter().map(|(id, comment)| map([("id", s(*id)), ("comment", s(*comment))])).collect();
    map([("skip", Node::Seq(skips))])
}

const SKIP_SQS_KMS: (&str, &str) = (
    "CKV_AWS_27",
    "Encrypted at rest with SSE-SQS (SQS-managed keys). A KMS key would make every producer (the app, \
     the CLI, any language) need kms:GenerateDataKey, and EventBridge cannot send to a queue under the \
     AWS-managed alias/aws/sqs key.",
);
const SKIP_TABLE_CMK: (&str, &str) = (
    "CKV_AWS_119",
    "Encrypted at rest with the AWS-managed DynamoDB KMS key (SSEType KMS). Task records expire after 30 \
     days; a customer-managed key adds cost and key-policy upkeep for no reader that lacks table access.",
);
const SKIP_FUNCTION_DLQ: (&str, &str) = (
    "CKV_AWS_116",
    "Invoked only by its SQS event source, never asynchronously: a failed record stays on the queue and \
     moves to the module's dead-letter queue by the queue's redrive policy.",
);
const SKIP_FUNCTION_VPC: (&str, &str) = (
    "CKV_AWS_117",
    "Reaches only AWS APIs and public HTTPS APIs, no resource inside a VPC; a VPC would only add NAT \
     gateways on that path.",
);
const SKIP_FUNCTION_RESERVED: (&str, &str) = (
    "CKV_AWS_115",
    "Concurrency is capped by the event source's ScalingConfig MaximumConcurrency; reserving concurrency \
     fails on accounts with the default quota and throttles the event source when set below it.",
);
const SKIP_FUNCTION_ENV_KMS: (&str, &str) = (
    "CKV_AWS_173",
    "The variables are resource names, URLs and settings; Lambda encrypts them at rest with its \
     AWS-managed key. Secret settings come from Secrets Manager at deploy time, never from parameters.",
);
const SKIP_LOGS_KMS: (&str, &str) = (
    "CKV_AWS_158",
    "CloudWatch Logs encrypts at rest by default, and the runtime never logs task arguments, results or \
     secrets.",
);
/// Settings of a rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// The workspace root as seen from the template's folder (`..` for `infra/template.yaml`):
    /// SAM runs `cargo lambda build` there, and cargo-lambda puts binaries in its `target/`.
    pub code_uri: String,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions { code_uri: "..".to_owned() }
    }
}

/// A rendered template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    root: Node,
}

impl Template {
    /// The whole template.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// A resource by logical id.
    pub fn resource(&self, logical_id: &str) -> Option<&Node> {
        self.root.get("Resources")?.get(logical_id)
    }

    /// The file's text: the header, then the template as YAML.
    pub fn to_yaml(&self) -> String {
        format!("{HEADER}{}", yaml::to_yaml(&self.root))
    }
}

/// A CloudFormation logical id from a manifest name: `nft-fair` becomes `NftFair`.
pub fn logical_id(name: &str) -> String {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Logical ids of one module's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleIds {
    /// The SQS queue.
    pub queue: String,
    /// Its dead-letter queue.
    pub dead_letter_queue: String,
    /// The queue's policy (present when a schedule targets the queue).
    pub queue_policy: String,
    /// The function.
    pub function: String,
    /// The function's role.
    pub role: String,
    /// The function's log group.
    pub log_group: String,
}

impl ModuleIds {
    /// The ids of module `name`.
    pub fn new(name: &str) -> Self {
        let base = logical_id(name);
        ModuleIds {
            queue: format!("{base}Queue"),
            dead_letter_queue: format!("{base}DeadLetterQueue"),
            queue_policy: format!("{base}QueuePolicy"),
            function: format!("{base}Function"),
            role: format!("{base}FunctionRole"),
            log_group: format!("{base}LogGroup"),
        }
    }
}

/// The logical id of the task table.
pub const TABLE_ID: &str = "TaskTable";
/// The logical id of Celery's result table (`[celery] results = true`).
pub const CELERY_RESULT_TABLE_ID: &str = "CeleryResultTable";
/// The parameter holding the log retention.
pub const LOG_RETENTION_PARAMETER: &str = "LogRetentionInDays";
/// The parameter to change after rotating a secret: CloudFormation resolves secret references
/// only when it updates the function, and a new value here is such an update.
pub const SECRETS_REVISION_PARAMETER: &str = "SecretsRevision";
/// The variable carrying [`SECRETS_REVISION_PARAMETER`] into functions that read secrets.
pub const ENV_SECRETS_REVISION: &str = "TASKBEAT_SECRETS_REVISION";

/// The logical id of a schedule's rule.
pub fn schedule_rule_id(schedule: &str) -> String {
    format!("{}Schedule", logical_id(schedule))
}

/// The template parameter carrying a plain setting (`APP_API_BASE` -> `AppApiBase`).
pub fn setting_parameter(env: &str) -> String {
    logical_id(&env.to_ascii_lowercase())
}

/// The template parameter naming the Secrets Manager secret of a secret setting.
pub fn secret_parameter(env: &str) -> String {
    format!("{}Secret", setting_parameter(env))
}

/// The AWS Lambda function name of a module.
pub fn function_name(manifest: &Manifest, module: &str) -> String {
    format!("{}-{module}", manifest.project.name)
}

/// Where EventBridge delivers a schedule, and what it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleTarget {
    /// The manifest queue it sends to.
    pub queue: String,
    /// The module consuming that queue.
    pub module: String,
    /// The input transformer's paths: placeholder name -> JSON path in the event.
    pub input_paths: Vec<(String, String)>,
    /// The input transformer's template: the envelope with `<id>` and `<time>` placeholders.
    pub input_template: String,
}

/// A schedule's target: the routed queue and an input transformer whose output is a valid
/// envelope with the event's id (unique per firing) as the task id and its time as `sent_at`.
pub fn schedule_target(manifest: &Manifest, name: &str, spec: &ScheduleSpec) -> Result<ScheduleTarget, InfraError> {
    let schedule_error = |message: String| InfraError::Schedule { schedule: name.to_owned(), message };
    let queue = spec.queue.clone().unwrap_or_else(|| manifest.route(&spec.task).to_owned());
    let Some((module, _)) = manifest.module_for_queue(&queue) else {
        return Err(schedule_error(format!(
            "sends to queue `{queue}`, which no module consumes; set `queue` to a module's queue"
        )));
    };
    let module = module.to_owned();
    let origin = format!("{SCHEDULE_ORIGIN_PREFIX}{}", manifest.rule_name(name));
    // Everything but the two placeholders is plain JSON from serde_json. `<` and `>` can only
    // occur inside JSON strings, where \u003c and \u003e mean the same, so no argument text
    // can ever look like a placeholder to EventBridge.
    let json =
        |value: &Value| serde_json::to_string(value).map(|text| text.replace('<', "\\u003c").replace('>', "\\u003e"));
    let fixed = |value: Value| json(&value).map_err(|e| schedule_error(format!("cannot encode: {e}")));
    let input_template = format!(
        "{{\"version\":{},\"id\":\"<id>\",\"task\":{},\"args\":{},\"kwargs\":{},\"sent_at\":\"<time>\",\"origin\":{}}}",
        crate::envelope::ENVELOPE_VERSION,
        fixed(Value::String(spec.task.clone()))?,
        fixed(Value::Array(spec.args.clone()))?,
        fixed(Value::Object(spec.kwargs.clone()))?,
        fixed(Value::String(origin))?,
    );
    let length = input_template.chars().count();
    if length > MAX_INPUT_TEMPLATE_CHARS {
        return Err(schedule_error(format!(
            "its envelope is {length} characters, over EventBridge's {MAX_INPUT_TEMPLATE_CHARS} for an input \
             template; pass large arguments by reference (an id or a URL) instead"
        )));
    }
    Ok(ScheduleTarget {
        queue,
        module,
        input_paths: vec![("id".into(), "$.id".into()), ("time".into(), "$.time".into())],
        input_template,
    })
}

/// What EventBridge's input transformer makes of `event`: each `<name>` of `input_paths` is
/// replaced by the value at its path; inside a JSON string the value's text goes in as it
/// is, elsewhere its JSON. Used to test templates, since no emulator does this faithfully.
pub fn eventbridge_input(
    input_paths: &[(String, String)],
    input_template: &str,
    event: &Value,
) -> Result<String, String> {
    let lookup = |path: &str| -> Result<&Value, String> {
        let rest = path.strip_prefix("$.").ok_or_else(|| format!("path {path} does not start with $."))?;
        rest.split('.').try_fold(event, |value, key| value.get(key).ok_or_else(|| format!("event has no {path}")))
    };
    let mut out = String::with_capacity(input_template.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = input_template;
    while let Some(c) = rest.chars().next() {
        if c == '<'
            && let Some(end) = rest.find('>')
            && let Some((_, path)) = input_paths.iter().find(|(name, _)| *name == rest[1..end])
        {
            let value = lookup(path)?;
            match (in_string, value) {
                (true, Value::String(text)) => out.push_str(text),
                _ => out.push_str(&value.to_string()),
            }
            rest = &rest[end + 1..];
            continue;
        }
        if in_string && !escaped && c == '"' {
            in_string = false;
        } else if !in_string && c == '"' {
            in_string = true;
        }
        escaped = in_string && !escaped && c == '\\';
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok(out)
}

/// Resources in order, refusing a logical id twice (two manifest names can map to one id).
#[derive(Debug, Default)]
struct Entries {
    entries: Vec<(String, Node)>,
    seen: BTreeSet<String>,
}

impl Entries {
    fn add(&mut self, id: impl Into<String>, node: Node) -> Result<(), InfraError> {
        let id = id.into();
        if id.is_empty() || !self.seen.insert(id.clone()) {
            return Err(invalid(
                format!("two manifest names give the template id `{id}`"),
                "rename a module, schedule or setting so that their letters and digits differ",
            ));
        }
        self.entries.push((id, node));
        Ok(())
    }

    fn into_node(self) -> Node {
        Node::Map(self.entries)
    }
}

fn check_name(kind: &str, name: &str, max: usize, extra: &[char]) -> Result<(), InfraError> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || extra.contains(&c));
    if name.is_empty() || name.len() > max || !ok_chars {
        return Err(invalid(
            format!("{kind} name `{name}` is not valid on AWS (at most {max} letters, digits, `-` or `_`)"),
            "shorten or rename the project, module, queue or schedule in taskbeat.toml",
        ));
    }
    Ok(())
}

fn check_module(manifest: &Manifest, name: &str, module: &Module) -> Result<(), InfraError> {
    let what = |detail: String| format!("module `{name}`: {detail}");
    check_name("function", &function_name(manifest, name), 64, &[])?;
    check_name("queue", &manifest.sqs_dlq_name(&module.queue), 80, &[])?;
    if !(128..=10_240).contains(&module.memory) {
        return Err(invalid(what(format!("memory {} MB is out of Lambda's 128..=10240", module.memory)), "use 256"));
    }
    if !(2..=1000).contains(&module.max_concurrency) {
        return Err(invalid(
            what(format!(
                "max_concurrency {} is out of 2..=1000, what an SQS event source takes",
                module.max_concurrency
            )),
            "use at least 2 (AWS's minimum for ScalingConfig MaximumConcurrency)",
        ));
    }
    if module.batch_size > 10 && module.batching_window == 0 {
        return Err(invalid(
            what(format!(
                "batch_size {} is over 10, which SQS event sources allow only with a batching window",
                module.batch_size
            )),
            "set batching_window to at least 1 (seconds), or batch_size to 10 or less",
        ));
    }
    for queue in &module.sends_to {
        if manifest.module_for_queue(queue).is_none() {
            return Err(invalid(
                what(format!("sends_to names queue `{queue}`, which no module consumes")),
                "list queues of modules in sends_to",
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for env in module.settings.iter().chain(&module.optional_settings).chain(&module.secrets) {
        let shape = env.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && env.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !shape {
            return Err(invalid(
                what(format!("setting `{env}` is not an environment variable name")),
                "use upper-case letters, digits and `_`, starting with a letter (APP_API_BASE)",
            ));
        }
        if ["AWS_", "LAMBDA_", "TASKBEAT_"].iter().any(|prefix| env.starts_with(prefix)) {
            return Err(invalid(
                what(format!("setting `{env}` uses a prefix Lambda or the template sets itself")),
                "rename the variable (AWS_, LAMBDA_ and TASKBEAT_ are taken)",
            ));
        }
        if !seen.insert(env.as_str()) {
            return Err(invalid(
                what(format!("setting `{env}` is listed twice")),
                "list each variable once, in `settings`, `optional_settings` or `secrets`",
            ));
        }
    }
    Ok(())
}

/// Renders the SAM template of a manifest.
pub fn render(manifest: &Manifest, options: &RenderOptions) -> Result<Template, InfraError> {
    check_name("table", &manifest.table_name(), 255, &['.'])?;
    for (name, module) in &manifest.modules {
        check_module(manifest, name, module)?;
    }
    // Schedule name -> (spec, schedule expression, target), in name order.
    let mut schedules: BTreeMap<&str, (&ScheduleSpec, String, ScheduleTarget)> = BTreeMap::new();
    for (name, spec) in &manifest.schedules {
        check_name("rule", &manifest.rule_name(name), 64, &['.'])?;
        let expression = eventbridge_expression(spec)
            .map_err(|e| InfraError::Schedule { schedule: name.clone(), message: e.to_string() })?;
        schedules.insert(name, (spec, expression, schedule_target(manifest, name, spec)?));
    }

    let mut resources = Entries::default();
    resources.add(TABLE_ID, table(manifest))?;
    if let Some(config) = manifest.celery_results() {
        resources.add(CELERY_RESULT_TABLE_ID, celery_result_table(&config))?;
    }
    for (name, module) in &manifest.modules {
        let ids = ModuleIds::new(name);
        let rules: Vec<String> = schedules
            .iter()
            .filter(|(_, (_, _, target))| target.queue == module.queue)
            .map(|(schedule, _)| schedule_rule_id(schedule))
            .collect();
        resources.add(&ids.dead_letter_queue, dead_letter_queue(manifest, module))?;
        resources.add(&ids.queue, queue(manifest, module, &ids))?;
        if !rules.is_empty() {
            resources.add(&ids.queue_policy, queue_policy(&ids, &rules))?;
        }
        resources.add(&ids.log_group, log_group(manifest, name))?;
        resources.add(&ids.role, role(manifest, module, &ids))?;
        resources.add(&ids.function, function(manifest, name, module, &ids, options))?;
    }
    for (name, (spec, expression, target)) in &schedules {
        resources.add(schedule_rule_id(name), rule(manifest, name, spec, expression, target))?;
    }

    let mut root = vec![
        ("AWSTemplateFormatVersion".into(), s("2010-09-09")),
        ("Transform".into(), s("AWS::Serverless-2016-10-31")),
        (
            "Description".into(),
            s(format!(
                "taskbeat project {}: one Lambda per task module on its own SQS queue, EventBridge schedules, \
                 DynamoDB task records. Rendered from taskbeat.toml.",
                manifest.project.name
            )),
        ),
        ("Parameters".into(), parameters(manifest)?),
    ];
    if let Some(conditions) = conditions(manifest)? {
        root.push(("Conditions".into(), conditions));
    }
    root.push(("Resources".into(), resources.into_node()));
    root.push(("Outputs".into(), outputs(manifest)?));
    Ok(Template { root: Node::Map(root) })
}

/// How a module's environment variable is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SettingKind {
    /// A parameter that must be given.
    Required,
    /// A parameter that may be left empty: then the variable is not set.
    Optional,
    /// A Secrets Manager secret, resolved at deploy time.
    Secret,
}

/// Every module variable with its kind and the modules reading it, by name.
fn settings(manifest: &Manifest) -> Result<BTreeMap<&str, (SettingKind, Vec<&str>)>, InfraError> {
    let mut all: BTreeMap<&str, (SettingKind, Vec<&str>)> = BTreeMap::new();
    for (name, module) in &manifest.modules {
        let kinds = [
            (&module.settings, SettingKind::Required),
            (&module.optional_settings, SettingKind::Optional),
            (&module.secrets, SettingKind::Secret),
        ];
        for (list, kind) in kinds {
            for env in list {
                let (known, modules) = all.entry(env).or_insert((kind, Vec::new()));
                if *known != kind {
                    return Err(invalid(
                        format!("`{env}` is deployed differently by modules {} and {name}", modules.join(", ")),
                        "list it the same way (settings, optional_settings or secrets) in every module that reads it",
                    ));
                }
                modules.push(name);
            }
        }
    }
    Ok(all)
}

/// The condition that an optional setting's parameter is not empty.
fn setting_is_set(env: &str) -> String {
    format!("{}IsSet", setting_parameter(env))
}

fn conditions(manifest: &Manifest) -> Result<Option<Node>, InfraError> {
    let mut conditions = Entries::default();
    for (env, (kind, _)) in settings(manifest)? {
        if kind == SettingKind::Optional {
            let empty = map([("Fn::Equals", Node::Seq(vec![reference(&setting_parameter(env)), s("")]))]);
            conditions.add(setting_is_set(env), map([("Fn::Not", Node::Seq(vec![empty]))]))?;
        }
    }
    Ok((!conditions.entries.is_empty()).then(|| conditions.into_node()))
}

fn parameters(manifest: &Manifest) -> Result<Node, InfraError> {
    let mut parameters = Entries::default();
    parameters.add(
        LOG_RETENTION_PARAMETER,
        map([
            ("Type", s("Number")),
            ("Description", s("Days the functions' CloudWatch logs are kept")),
            ("Default", int(30)),
            (
                "AllowedValues",
                Node::Seq(
                    [
                        1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
                        3288, 3653,
                    ]
                    .into_iter()
                    .map(int)
                    .collect(),
                ),
            ),
        ]),
    )?;
    if manifest.modules.values().any(|module| !module.secrets.is_empty()) {
        parameters.add(
            SECRETS_REVISION_PARAMETER,
            map([
                ("Type", s("String")),
                (
                    "Description",
                    s("Change (to any new value) after rotating a secret: the functions then re-read their secrets"),
                ),
                ("Default", s("1")),
            ]),
        )?;
    }
    // One parameter per variable, shared by the modules that read it.
    for (env, (kind, modules)) in settings(manifest)? {
        let modules = modules.join(", ");
        let parameter = match kind {
            SettingKind::Required => map([
                ("Type", s("String")),
                ("Description", s(format!("{env} of module {modules}"))),
                ("MinLength", int(1)),
            ]),
            SettingKind::Optional => map([
                ("Type", s("String")),
                ("Description", s(format!("{env} of module {modules}; empty keeps the module's default"))),
                ("Default", s("")),
            ]),
            SettingKind::Secret => map([
                ("Type", s("String")),
                (
                    "Description",
                    s(format!(
                        "Name or ARN of the Secrets Manager secret whose SecretString is {env} (module {modules}); \
                         resolved at deploy time"
                    )),
                ),
                ("Default", s(format!("{}/{env}", manifest.project.name))),
                ("MinLength", int(1)),
            ]),
        };
        let id = if kind == SettingKind::Secret { secret_parameter(env) } else { setting_parameter(env) };
        parameters.add(id, parameter)?;
    }
    Ok(parameters.into_node())
}

fn table(manifest: &Manifest) -> Node {
    let mut attributes: Vec<&str> = vec![HASH_KEY];
    for index in INDEXES {
        for key in [index.hash_key, index.range_key] {
            if !attributes.contains(&key) {
                attributes.push(key);
            }
        }
    }
    let attribute_definitions =
        attributes.into_iter().map(|name| map([("AttributeName", s(name)), ("AttributeType", s("S"))])).collect();
    let key = |name: &str, kind: &str| map([("AttributeName", s(name)), ("KeyType", s(kind))]);
    let indexes = INDEXES
        .iter()
        .map(|index| {
            map([
                ("IndexName", s(index.name)),
                ("KeySchema", Node::Seq(vec![key(index.hash_key, "HASH"), key(index.range_key, "RANGE")])),
                ("Projection", map([("ProjectionType", s("ALL"))])),
            ])
        })
        .collect();
    map([
        ("Type", s("AWS::DynamoDB::Table")),
        // Records are operational history with a 30-day TTL; tearing the stack down removes them.
        ("DeletionPolicy", s("Delete")),
        ("UpdateReplacePolicy", s("Delete")),
        ("Metadata", map([("checkov", checkov_skips(&[SKIP_TABLE_CMK]))])),
        (
            "Properties",
            map([
                ("TableName", s(manifest.table_name())),
                ("BillingMode", s("PAY_PER_REQUEST")),
                ("AttributeDefinitions", Node::Seq(attribute_definitions)),
                ("KeySchema", Node::Seq(vec![key(HASH_KEY, "HASH")])),
                ("GlobalSecondaryIndexes", Node::Seq(indexes)),
                ("TimeToLiveSpecification", map([("AttributeName", s(TTL_ATTRIBUTE)), ("Enabled", Node::Bool(true))])),
                ("PointInTimeRecoverySpecification", map([("PointInTimeRecoveryEnabled", Node::Bool(true))])),
                ("SSESpecification", map([("SSEEnabled", Node::Bool(true)), ("SSEType", s("KMS"))])),
            ]),
        ),
    ])
}

/// Celery's result table as its DynamoDB backend creates it: hash key `id` (a string), on
/// demand, TTL on `ttl` when results expire.
fn celery_result_table(config: &crate::celery::results::ResultBackendConfig) -> Node {
    use crate::celery::results::{KEY_ATTRIBUTE, TTL_ATTRIBUTE as CELERY_TTL};
    let mut properties = vec![
        ("TableName".to_owned(), s(&config.table)),
        ("BillingMode".to_owned(), s("PAY_PER_REQUEST")),
        (
            "AttributeDefinitions".to_owned(),
            Node::Seq(vec![map([("AttributeName", s(KEY_ATTRIBUTE)), ("AttributeType", s("S"))])]),
        ),
        ("KeySchema".to_owned(), Node::Seq(vec![map([("AttributeName", s(KEY_ATTRIBUTE)), ("KeyType", s("HASH"))])])),
    ];
    if config.expires.is_some() {
        properties.push((
            "TimeToLiveSpecification".to_owned(),
            map([("AttributeName", s(CELERY_TTL)), ("Enabled", Node::Bool(true))]),
        ));
    }
    properties
        .push(("PointInTimeRecoverySpecification".to_owned(), map([("PointInTimeRecoveryEnabled", Node::Bool(true))])));
    properties.push(("SSESpecification".to_owned(), map([("SSEEnabled", Node::Bool(true)), ("SSEType", s("KMS"))])));
    map([
        ("Type", s("AWS::DynamoDB::Table")),
        ("DeletionPolicy", s("Delete")),
        ("UpdateReplacePolicy", s("Delete")),
        ("Metadata", map([("checkov", checkov_skips(&[SKIP_TABLE_CMK]))])),
        ("Properties", Node::Map(properties)),
    ])
}

fn dead_letter_queue(manifest: &Manifest, module: &Module) -> Node {
    let settings = manifest.queue_settings(&module.queue);
    // Only the module's own queue may use it as a dead-letter queue.
    let source = format!(
        "arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:{}",
        manifest.sqs_queue_name(&module.queue)
    );
    map([
        ("Type", s("AWS::SQS::Queue")),
        ("Metadata", map([("checkov", checkov_skips(&[SKIP_SQS_KMS]))])),
        (
            "Properties",
            map([
                ("QueueName", s(manifest.sqs_dlq_name(&module.queue))),
                ("MessageRetentionPeriod", int(DLQ_RETENTION_SECONDS)),
                ("MaximumMessageSize", int(i64::try_from(settings.max_message_bytes).unwrap_or(i64::MAX))),
                ("SqsManagedSseEnabled", Node::Bool(true)),
                (
                    "RedriveAllowPolicy",
                    map([("redrivePermission", s("byQueue")), ("sourceQueueArns", Node::Seq(vec![sub(source)]))]),
                ),
            ]),
        ),
    ])
}

fn queue(manifest: &Manifest, module: &Module, ids: &ModuleIds) -> Node {
    let settings = manifest.queue_settings(&module.queue);
    map([
        ("Type", s("AWS::SQS::Queue")),
        ("Metadata", map([("checkov", checkov_skips(&[SKIP_SQS_KMS]))])),
        (
            "Properties",
            map([
                ("QueueName", s(manifest.sqs_queue_name(&module.queue))),
                // Six times the function timeout plus the batching window, as AWS advises.
                ("VisibilityTimeout", int(i64::try_from(module.visibility_timeout().as_secs()).unwrap_or(i64::MAX))),
                ("MessageRetentionPeriod", int(QUEUE_RETENTION_SECONDS)),
                ("MaximumMessageSize", int(i64::try_from(settings.max_message_bytes).unwrap_or(i64::MAX))),
                ("SqsManagedSseEnabled", Node::Bool(true)),
                (
                    "RedrivePolicy",
                    map([
                        ("deadLetterTargetArn", get_att(&ids.dead_letter_queue, "Arn")),
                        ("maxReceiveCount", int(settings.max_receive_count)),
                    ]),
                ),
            ]),
        ),
    ])
}

fn queue_policy(ids: &ModuleIds, rules: &[String]) -> Node {
    let sources = Node::Seq(rules.iter().map(|rule| get_att(rule, "Arn")).collect());
    map([
        ("Type", s("AWS::SQS::QueuePolicy")),
        (
            "Properties",
            map([
                ("Queues", Node::Seq(vec![reference(&ids.queue)])),
                (
                    "PolicyDocument",
                    map([
                        ("Version", s("2012-10-17")),
                        (
                            "Statement",
                            Node::Seq(vec![map([
                                ("Sid", s("ScheduleRulesSend")),
                                ("Effect", s("Allow")),
                                ("Principal", map([("Service", s("events.amazonaws.com"))])),
                                ("Action", s("sqs:SendMessage")),
                                ("Resource", get_att(&ids.queue, "Arn")),
                                ("Condition", map([("ArnEquals", map([("aws:SourceArn", sources)]))])),
                            ])]),
                        ),
                    ]),
                ),
            ]),
        ),
    ])
}

fn log_group(manifest: &Manifest, name: &str) -> Node {
    map([
        ("Type", s("AWS::Logs::LogGroup")),
        ("Metadata", map([("checkov", checkov_skips(&[SKIP_LOGS_KMS]))])),
        (
            "Properties",
            map([
                ("LogGroupName", s(format!("/aws/lambda/{}", function_name(manifest, name)))),
                ("RetentionInDays", reference(LOG_RETENTION_PARAMETER)),
            ]),
        ),
    ])
}

fn statement(sid: &str, actions: Vec<&str>, resource: Node) -> Node {
    let mut actions = actions;
    actions.sort_unstable();
    actions.dedup();
    let action = if actions.len() == 1 { s(actions[0]) } else { strs(actions) };
    map([("Sid", s(sid)), ("Effect", s("Allow")), ("Action", action), ("Resource", resource)])
}

fn role(manifest: &Manifest, module: &Module, ids: &ModuleIds) -> Node {
    // `check_module` made sure a module consumes each of these queues.
    let queue_arn = |queue: &str| {
        let consumer = manifest.module_for_queue(queue).map_or(queue, |(name, _)| name);
        get_att(&ModuleIds::new(consumer).queue, "Arn")
    };
    let mut statements = vec![
        statement("WriteOwnLogs", vec!["logs:CreateLogStream", "logs:PutLogEvents"], get_att(&ids.log_group, "Arn")),
        // GetQueueUrl: the runtime finds its own queue by name to delay a retry's redelivery.
        statement("ConsumeOwnQueue", [&CONSUME_ACTIONS[..], &["sqs:GetQueueUrl"]].concat(), get_att(&ids.queue, "Arn")),
        statement("DeadLetterToOwnQueue", vec!["sqs:SendMessage"], get_att(&ids.dead_letter_queue, "Arn")),
    ];
    if !module.sends_to.is_empty() {
        let mut queues: Vec<&str> = module.sends_to.iter().map(String::as_str).collect();
        queues.sort_unstable();
        queues.dedup();
        statements.push(statement(
            "SendChildTasks",
            vec!["sqs:GetQueueUrl", "sqs:SendMessage"],
            Node::Seq(queues.into_iter().map(queue_arn).collect()),
        ));
    }
    if module.inspects_queues {
        let every = manifest
            .modules
            .keys()
            .flat_map(|name| {
                let other = ModuleIds::new(name);
                [get_att(&other.queue, "Arn"), get_att(&other.dead_letter_queue, "Arn")]
            })
            .collect();
        statements.push(statement(
            "ReadQueueDepths",
            vec!["sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
            Node::Seq(every),
        ));
    }
    statements.push(statement("TaskRecords", TABLE_ITEM_ACTIONS.to_vec(), get_att(TABLE_ID, "Arn")));
    if manifest.celery_results().is_some() {
        // Each state change is one conditional PutItem of Celery's item.
        statements.push(statement("CeleryResults", vec!["dynamodb:PutItem"], get_att(CELERY_RESULT_TABLE_ID, "Arn")));
    }
    statements.push(statement(
        "ListTaskRecords",
        vec!["dynamodb:Query"],
        Node::Seq(INDEXES.iter().map(|index| sub(format!("${{{TABLE_ID}.Arn}}/index/{}", index.name))).collect()),
    ));
    map([
        ("Type", s("AWS::IAM::Role")),
        (
            "Properties",
            map([
                (
                    "AssumeRolePolicyDocument",
                    map([
                        ("Version", s("2012-10-17")),
                        (
                            "Statement",
                            Node::Seq(vec![map([
                                ("Effect", s("Allow")),
                                ("Principal", map([("Service", s("lambda.amazonaws.com"))])),
                                ("Action", s("sts:AssumeRole")),
                            ])]),
                        ),
                    ]),
                ),
                (
                    "Policies",
                    Node::Seq(vec![map([
                        ("PolicyName", s("taskbeat-function")),
                        ("PolicyDocument", map([("Version", s("2012-10-17")), ("Statement", Node::Seq(statements))])),
                    ])]),
                ),
            ]),
        ),
    ])
}

fn function(manifest: &Manifest, name: &str, module: &Module, ids: &ModuleIds, options: &RenderOptions) -> Node {
    let mut variables = vec![
        (ENV_TABLE.to_owned(), reference(TABLE_ID)),
        (ENV_DLQ_URL.to_owned(), reference(&ids.dead_letter_queue)),
        (ENV_QUEUE.to_owned(), s(&module.queue)),
        // A task's default time limit is the module's timeout, as in `taskbeat local`.
        (ENV_TIME_LIMIT.to_owned(), s(module.timeout.to_string())),
    ];
    if manifest.celery_results().is_some() {
        variables.push((ENV_CELERY_RESULTS_TABLE.to_owned(), reference(CELERY_RESULT_TABLE_ID)));
    }
    for env in &module.settings {
        variables.push((env.clone(), reference(&setting_parameter(env))));
    }
    for env in &module.optional_settings {
        let value = reference(&setting_parameter(env));
        let if_set = Node::Seq(vec![s(setting_is_set(env)), value, reference("AWS::NoValue")]);
        variables.push((env.clone(), map([("Fn::If", if_set)])));
    }
    for env in &module.secrets {
        // Resolved by CloudFormation at deploy time: the value is never a parameter, never in
        // the template or samconfig.
        variables.push((
            env.clone(),
            sub(format!("{{{{resolve:secretsmanager:${{{}}}:SecretString}}}}", secret_parameter(env))),
        ));
    }
    if !module.secrets.is_empty() {
        variables.push((ENV_SECRETS_REVISION.to_owned(), reference(SECRETS_REVISION_PARAMETER)));
    }
    let event = map([
        ("Type", s("SQS")),
        (
            "Properties",
            map([
                ("Queue", get_att(&ids.queue, "Arn")),
                ("BatchSize", int(module.batch_size)),
                ("MaximumBatchingWindowInSeconds", int(module.batching_window)),
                ("FunctionResponseTypes", strs(["ReportBatchItemFailures"])),
                ("ScalingConfig", map([("MaximumConcurrency", int(module.max_concurrency))])),
                ("Enabled", Node::Bool(true)),
            ]),
        ),
    ]);
    map([
        ("Type", s("AWS::Serverless::Function")),
        (
            "Metadata",
            map([
                ("BuildMethod", s(BUILD_METHOD)),
                // The module's [[bin]] in its crate (named after the module).
                ("BuildProperties", map([("Binary", s(name))])),
                (
                    "checkov",
                    checkov_skips(&[
                        SKIP_FUNCTION_DLQ,
                        SKIP_FUNCTION_VPC,
                        SKIP_FUNCTION_RESERVED,
                        SKIP_FUNCTION_ENV_KMS,
                    ]),
                ),
            ]),
        ),
        (
            "Properties",
            map([
                ("FunctionName", s(function_name(manifest, name))),
                (
                    "Description",
                    s(format!("taskbeat module {name} (crate {}), queue {}", module.crate_name, module.queue)),
                ),
                ("CodeUri", s(&options.code_uri)),
                ("Handler", s("bootstrap")),
                ("Runtime", s(LAMBDA_RUNTIME)),
                ("Architectures", strs([LAMBDA_ARCHITECTURE])),
                ("MemorySize", int(module.memory)),
                ("Timeout", int(module.timeout)),
                ("Role", get_att(&ids.role, "Arn")),
                (
                    "LoggingConfig",
                    map([
                        ("LogFormat", s("JSON")),
                        ("ApplicationLogLevel", s("INFO")),
                        ("SystemLogLevel", s("WARN")),
                        ("LogGroup", reference(&ids.log_group)),
                    ]),
                ),
                ("Environment", map([("Variables", Node::Map(variables))])),
                ("Events", map([("Queue", event)])),
            ]),
        ),
    ])
}

fn rule(manifest: &Manifest, name: &str, spec: &ScheduleSpec, expression: &str, target: &ScheduleTarget) -> Node {
    let paths = Node::Map(target.input_paths.iter().map(|(k, v)| (k.clone(), s(v))).collect());
    map([
        ("Type", s("AWS::Events::Rule")),
        (
            "Properties",
            map([
                ("Name", s(manifest.rule_name(name))),
                ("Description", s(format!("taskbeat schedule {name}: sends {} to queue {}", spec.task, target.queue))),
                ("ScheduleExpression", s(expression)),
                ("State", s(if spec.enabled { "ENABLED" } else { "DISABLED" })),
                (
                    "Targets",
                    Node::Seq(vec![map([
                        ("Id", s(manifest.sqs_queue_name(&target.queue))),
                        ("Arn", get_att(&ModuleIds::new(&target.module).queue, "Arn")),
                        (
                            "InputTransformer",
                            map([("InputPathsMap", paths), ("InputTemplate", s(&target.input_template))]),
                        ),
                    ])]),
                ),
            ]),
        ),
    ])
}

fn outputs(manifest: &Manifest) -> Result<Node, InfraError> {
    let mut outputs = Entries::default();
    for (name, module) in &manifest.modules {
        let ids = ModuleIds::new(name);
        outputs.add(
            format!("{}Url", ids.queue),
            map([
                ("Description", s(format!("URL of queue {} (module {name})", manifest.sqs_queue_name(&module.queue)))),
                ("Value", reference(&ids.queue)),
            ]),
        )?;
        outputs.add(
            format!("{}Url", ids.dead_letter_queue),
            map([
                ("Description", s(format!("URL of dead-letter queue {}", manifest.sqs_dlq_name(&module.queue)))),
                ("Value", reference(&ids.dead_letter_queue)),
            ]),
        )?;
    }
    outputs.add(
        format!("{TABLE_ID}Name"),
        map([("Description", s("DynamoDB table of task records")), ("Value", reference(TABLE_ID))]),
    )?;
    if manifest.celery_results().is_some() {
        outputs.add(
            format!("{CELERY_RESULT_TABLE_ID}Name"),
            map([
                ("Description", s("DynamoDB table Celery's result backend reads (dynamodb://@REGION/TABLE)")),
                ("Value", reference(CELERY_RESULT_TABLE_ID)),
            ]),
        )?;
    }
    Ok(outputs.into_node())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    const REPO_MANIFEST: &str = include_str!("../../taskbeat.toml");

    /// Quotes, backslashes, newlines, non-ASCII text and placeholder look-alikes in arguments.
    const TRICKY: &str = r##"
[project]
name = "tb"

[modules.user]
crate = "taskbeat-user"
queue = "default"
settings = ["APP_API_BASE"]
optional_settings = ["APP_API_TIMEOUT_SECS"]

[modules.alert]
crate = "taskbeat-alert"
queue = "alerts"
max_concurrency = 3
sends_to = ["alerts"]
inspects_queues = true
secrets = ["ALERT_TOKEN"]

[queues.alerts]
max_receive_count = 4

[[routes]]
pattern = "app.schedules.alert.*"
queue = "alerts"

[schedules.quoted]
task = "app.schedules.alert.check_health"
expression = "rate(5 minutes)"
args = ["it's \"quoted\" \\ back\\slash", "héllo wörld ✓ 日本 😀", "<id> <time> <aws.events.event>", { nested = ["a\nb", "}{"] }]
kwargs = { note = "ünïcode \"x\" </script>", n = 3, ok = true }

[schedules.paused]
task = "app.schedules.user_task.process_users"
expression = "cron(0 3 * * ? *)"
enabled = false

[schedules.redirected]
task = "app.schedules.user_task.process_users"
expression = "rate(1 hour)"
queue = "alerts"
"##;

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(text, "test").unwrap()
    }

    fn scheduled_event(id: &str, time: &str, rule: &str) -> Value {
        serde_json::json!({
            "version": "0",
            "id": id,
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": time,
            "region": "us-east-1",
            "resources": [format!("arn:aws:events:us-east-1:123456789012:rule/{rule}")],
            "detail": {}
        })
    }

    fn envelope_schema() -> jsonschema::Validator {
        let schema: Value = serde_json::from_str(include_str!("../schema/envelope.schema.json")).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    }

    /// Every schedule's rule, fired twice: each firing is a valid envelope with its own id and
    /// exactly the manifest's task, args and kwargs.
    fn check_every_firing(manifest: &Manifest) -> usize {
        let schema = envelope_schema();
        let template = render(manifest, &RenderOptions::default()).unwrap();
        for (name, spec) in &manifest.schedules {
            let rule = template.resource(&schedule_rule_id(name)).unwrap().get("Properties").unwrap();
            let target = &rule.get("Targets").unwrap().to_json()[0];
            let transformer = &target["InputTransformer"];
            let paths: Vec<(String, String)> = transformer["InputPathsMap"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let input = transformer["InputTemplate"].as_str().unwrap();
            let firings = [
                ("53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "2026-12-03T03:00:00Z"),
                ("a8f1e0b2-6c1d-4d0e-9b1f-2f3e4d5c6b7a", "2026-12-04T03:00:00Z"),
            ];
            let mut ids = BTreeSet::new();
            for (event_id, time) in firings {
                let event = scheduled_event(event_id, time, &manifest.rule_name(name));
                let body = eventbridge_input(&paths, input, &event).unwrap();
                let envelope = Envelope::parse(&body).unwrap_or_else(|e| panic!("{name}: {e}\n{body}"));
                assert!(schema.is_valid(&serde_json::from_str::<Value>(&body).unwrap()), "{name}: {body}");
                assert_eq!(envelope.id.to_string(), event_id, "{name}");
                assert_eq!(envelope.task, spec.task, "{name}");
                assert_eq!(envelope.args, spec.args, "{name}");
                assert_eq!(envelope.kwargs, spec.kwargs, "{name}");
                assert_eq!(envelope.sent_at.map(|t| t.to_rfc3339()), Some(format!("{}+00:00", &time[..19])));
                assert_eq!(
                    envelope.origin.as_deref(),
                    Some(format!("eventbridge:{}", manifest.rule_name(name)).as_str())
                );
                ids.insert(envelope.id);
            }
            assert_eq!(ids.len(), 2, "{name}: every firing needs its own task id");
        }
        manifest.schedules.len()
    }

    #[test]
    fn every_schedule_of_the_repo_manifest_fires_valid_envelopes() {
        check_every_firing(&manifest(REPO_MANIFEST));
    }

    #[test]
    fn quotes_and_non_ascii_arguments_survive_the_transformer() {
        let manifest = manifest(TRICKY);
        assert_eq!(check_every_firing(&manifest), 3);
        let target = schedule_target(&manifest, "quoted", &manifest.schedules["quoted"]).unwrap();
        // No argument text can pose as a placeholder: only <id> and <time> remain.
        let placeholders: Vec<&str> =
            target.input_template.match_indices('<').map(|(i, _)| &target.input_template[i..i + 4]).collect();
        assert_eq!(placeholders, ["<id>", "<tim"]);
        // Survives the YAML too: the emitted string reads back as the same JSON.
        let yaml = render(&manifest, &RenderOptions::default()).unwrap().to_yaml();
        let line =
            yaml.lines().find(|l| l.trim_start().starts_with("InputTemplate:") && l.contains("check_health")).unwrap();
        let quoted = line.trim_start().trim_start_matches("InputTemplate: ");
        let unquoted: String = serde_json::from_str(quoted).unwrap();
        assert_eq!(unquoted, target.input_template);
    }

    #[test]
    fn schedules_target_the_routed_or_chosen_queue_and_only_their_rules_may_send() {
        let manifest = manifest(TRICKY);
        let template = render(&manifest, &RenderOptions::default()).unwrap();
        let json = template.root().to_json();
        let resources = &json["Resources"];
        assert_eq!(resources["PausedSchedule"]["Properties"]["State"], "DISABLED");
        assert_eq!(resources["QuotedSchedule"]["Properties"]["State"], "ENABLED");
        assert_eq!(resources["QuotedSchedule"]["Properties"]["Name"], "tb-quoted");
        assert_eq!(resources["QuotedSchedule"]["Properties"]["ScheduleExpression"], "rate(5 minutes)");
        let target_of = |rule: &str| resources[rule]["Properties"]["Targets"][0]["Arn"]["Fn::GetAtt"][0].clone();
        assert_eq!(target_of("QuotedSchedule"), "AlertQueue");
        assert_eq!(target_of("PausedSchedule"), "UserQueue");
        assert_eq!(target_of("RedirectedSchedule"), "AlertQueue");
        let senders = |policy: &str| {
            let statement = &resources[policy]["Properties"]["PolicyDocument"]["Statement"][0];
            assert_eq!(statement["Principal"]["Service"], "events.amazonaws.com");
            assert_eq!(statement["Action"], "sqs:SendMessage");
            statement["Condition"]["ArnEquals"]["aws:SourceArn"]
                .as_array()
                .unwrap()
                .iter()
                .map(|arn| arn["Fn::GetAtt"][0].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(senders("AlertQueuePolicy"), ["QuotedSchedule", "RedirectedSchedule"]);
        assert_eq!(senders("UserQueuePolicy"), ["PausedSchedule"]);
    }

    #[test]
    fn queues_functions_and_table_follow_the_manifest() {
        let manifest = manifest(REPO_MANIFEST);
        let template = render(&manifest, &RenderOptions::default()).unwrap();
        let json = template.root().to_json();
        let resources = &json["Resources"];
        for (name, module) in &manifest.modules {
            let ids = ModuleIds::new(name);
            let queue = &resources[&ids.queue]["Properties"];
            assert_eq!(queue["QueueName"], manifest.sqs_queue_name(&module.queue));
            assert_eq!(queue["VisibilityTimeout"], module.visibility_timeout().as_secs());
            assert!(queue["VisibilityTimeout"].as_u64().unwrap() >= 6 * u64::from(module.timeout));
            assert_eq!(queue["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0], ids.dead_letter_queue);
            assert_eq!(
                queue["RedrivePolicy"]["maxReceiveCount"],
                manifest.queue_settings(&module.queue).max_receive_count
            );
            assert_eq!(queue["SqsManagedSseEnabled"], true);
            let dlq = &resources[&ids.dead_letter_queue]["Properties"];
            assert_eq!(dlq["QueueName"], manifest.sqs_dlq_name(&module.queue));
            assert_eq!(dlq["SqsManagedSseEnabled"], true);

            let function = &resources[&ids.function];
            assert_eq!(function["Metadata"]["BuildMethod"], "rust-cargolambda");
            assert_eq!(function["Metadata"]["BuildProperties"]["Binary"], name.as_str());
            let props = &function["Properties"];
            assert_eq!(props["Runtime"], "provided.al2023");
            assert_eq!(props["Architectures"], serde_json::json!(["arm64"]));
            assert_eq!(props["Handler"], "bootstrap");
            assert_eq!(props["CodeUri"], "..");
            assert_eq!(props["MemorySize"], module.memory);
            assert_eq!(props["Timeout"], module.timeout);
            let env = &props["Environment"]["Variables"];
            assert_eq!(env[ENV_TABLE]["Ref"], TABLE_ID);
            assert_eq!(env[ENV_DLQ_URL]["Ref"], ids.dead_letter_queue);
            assert_eq!(env[ENV_QUEUE], module.queue.as_str());
            assert_eq!(env[ENV_TIME_LIMIT], module.timeout.to_string());
            for setting in &module.settings {
                assert_eq!(env[setting]["Ref"], setting_parameter(setting), "{name}: {setting}");
                assert!(json["Parameters"][setting_parameter(setting)].is_object());
            }
            for secret in &module.secrets {
                let value = env[secret]["Fn::Sub"].as_str().unwrap();
                assert!(value.starts_with("{{resolve:secretsmanager:${") && value.contains(&secret_parameter(secret)));
            }
            let event = &props["Events"]["Queue"]["Properties"];
            assert_eq!(event["Queue"]["Fn::GetAtt"][0], ids.queue);
            assert_eq!(event["BatchSize"], module.batch_size);
            assert_eq!(event["MaximumBatchingWindowInSeconds"], module.batching_window);
            assert_eq!(event["FunctionResponseTypes"], serde_json::json!(["ReportBatchItemFailures"]));
            assert_eq!(event["ScalingConfig"]["MaximumConcurrency"], module.max_concurrency);
        }
        let table = &resources[TABLE_ID]["Properties"];
        assert_eq!(table["TableName"], manifest.table_name());
        assert_eq!(table["BillingMode"], "PAY_PER_REQUEST");
        assert_eq!(table["TimeToLiveSpecification"]["AttributeName"], TTL_ATTRIBUTE);
        assert_eq!(table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"], true);
        assert_eq!(table["SSESpecification"]["SSEEnabled"], true);
        let indexes: Vec<&str> = table["GlobalSecondaryIndexes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["IndexName"].as_str().unwrap())
            .collect();
        assert_eq!(indexes, INDEXES.map(|i| i.name));
        let outputs = json["Outputs"].as_object().unwrap();
        assert_eq!(outputs.len(), manifest.modules.len() * 2 + 1);
    }

    /// Every statement of every role, as (sid, actions, resources as JSON text).
    fn statements(template: &Template, module: &str) -> Vec<(String, Vec<String>, String)> {
        let role = template.resource(&ModuleIds::new(module).role).unwrap().to_json();
        role["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|st| {
                let actions = match &st["Action"] {
                    Value::String(a) => vec![a.clone()],
                    other => other.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
                };
                (st["Sid"].as_str().unwrap().to_owned(), actions, st["Resource"].to_string())
            })
            .collect()
    }

    #[test]
    fn roles_grant_only_what_each_module_uses() {
        let manifest = manifest(TRICKY);
        let template = render(&manifest, &RenderOptions::default()).unwrap();
        for module in manifest.modules.keys() {
            for (sid, actions, resources) in statements(&template, module) {
                assert!(actions.iter().all(|a| !a.contains('*')), "{module}/{sid}: wildcard action {actions:?}");
                assert!(!resources.contains('*'), "{module}/{sid}: wildcard resource {resources}");
            }
        }
        let user: BTreeMap<String, (Vec<String>, String)> =
            statements(&template, "user").into_iter().map(|(sid, a, r)| (sid, (a, r))).collect();
        assert_eq!(
            user.keys().map(String::as_str).collect::<Vec<_>>(),
            ["ConsumeOwnQueue", "DeadLetterToOwnQueue", "ListTaskRecords", "TaskRecords", "WriteOwnLogs"]
        );
        assert_eq!(user["ConsumeOwnQueue"].1, r#"{"Fn::GetAtt":["UserQueue","Arn"]}"#);
        assert_eq!(
            user["DeadLetterToOwnQueue"],
            (vec!["sqs:SendMessage".to_owned()], r#"{"Fn::GetAtt":["UserDeadLetterQueue","Arn"]}"#.to_owned())
        );
        assert!(
            user["ListTaskRecords"].1.contains("/index/by_state")
                && user["ListTaskRecords"].1.contains("/index/by_task")
        );

        let alert: BTreeMap<String, (Vec<String>, String)> =
            statements(&template, "alert").into_iter().map(|(sid, a, r)| (sid, (a, r))).collect();
        assert_eq!(
            alert["SendChildTasks"],
            (
                vec!["sqs:GetQueueUrl".to_owned(), "sqs:SendMessage".to_owned()],
                r#"[{"Fn::GetAtt":["AlertQueue","Arn"]}]"#.to_owned()
            )
        );
        let depths: Value = serde_json::from_str(&alert["ReadQueueDepths"].1).unwrap();
        let queues: BTreeSet<&str> =
            depths.as_array().unwrap().iter().map(|q| q["Fn::GetAtt"][0].as_str().unwrap()).collect();
        assert_eq!(queues, BTreeSet::from(["AlertDeadLetterQueue", "AlertQueue", "UserDeadLetterQueue", "UserQueue"]));
        assert_eq!(alert["ReadQueueDepths"].0, ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"]);
    }

    /// The roles grant every DynamoDB and SQS call the runtime makes, so a new call in the
    /// store or queue code cannot ship without its permission.
    #[test]
    fn roles_cover_every_call_the_runtime_makes() {
        let calls = [
            (
                include_str!("store/dynamodb.rs"),
                [
                    ("get_item", "dynamodb:GetItem"),
                    ("put_item", "dynamodb:PutItem"),
                    ("update_item", "dynamodb:UpdateItem"),
                    ("query", "dynamodb:Query"),
                ]
                .as_slice(),
            ),
            (
                include_str!("queue/sqs.rs"),
                [
                    ("send_message", "sqs:SendMessage"),
                    ("receive_message", "sqs:ReceiveMessage"),
                    ("delete_message_batch", "sqs:DeleteMessage"),
                    ("change_message_visibility", "sqs:ChangeMessageVisibility"),
                    ("get_queue_attributes", "sqs:GetQueueAttributes"),
                    ("get_queue_url", "sqs:GetQueueUrl"),
                ]
                .as_slice(),
            ),
        ];
        // Calls used only to create resources (`taskbeat --aws local --create-resources`), and
        // calls only the operator CLI makes with the operator's credentials (`taskbeat purge`,
        // `taskbeat dlq redrive`): no function's role needs them.
        let provisioning = [
            "create_table",
            "update_time_to_live",
            "create_queue",
            "set_queue_attributes",
            "purge_queue",
            "start_message_move_task",
            "list_message_move_tasks",
        ];
        for (source, pairs) in &calls {
            // An SDK operation is `client.op()` or a `.op()` line right after a `client` line.
            let mut used = BTreeSet::new();
            let lines: Vec<&str> = source.lines().map(str::trim).collect();
            for (i, line) in lines.iter().enumerate() {
                let after_client = i > 0 && lines[i - 1].ends_with("client");
                let call = match line.split_once("client.") {
                    Some((_, rest)) => rest.split_once("()").map(|(op, _)| op),
                    None if after_client => line.strip_prefix('.').and_then(|l| l.strip_suffix("()")),
                    None => None,
                };
                if let Some(op) = call.filter(|op| op.chars().all(|c| c.is_ascii_lowercase() || c == '_')) {
                    used.insert(op);
                }
            }
            let listed: BTreeSet<&str> = pairs.iter().map(|(op, _)| *op).collect();
            let unlisted: Vec<&&str> =
                used.iter().filter(|op| !listed.contains(**op) && !provisioning.contains(*op)).collect();
            assert!(unlisted.is_empty(), "the runtime calls {unlisted:?}: grant it in infra.rs and list it here");
            let unused: Vec<&&str> = listed.iter().filter(|op| !used.contains(**op)).collect();
            assert!(unused.is_empty(), "{unused:?} no longer called: drop the grant and the entry");
        }
        // Every module may make every call, even one with no sends_to or inspects_queues.
        let manifest = manifest(TRICKY);
        let template = render(&manifest, &RenderOptions::default()).unwrap();
        for module in manifest.modules.keys() {
            let granted: BTreeSet<String> = statements(&template, module).into_iter().flat_map(|(_, a, _)| a).collect();
            for (_, pairs) in &calls {
                for (_, action) in pairs.iter() {
                    assert!(granted.contains(*action), "{module}: {action} is not granted");
                }
            }
        }
    }

    /// `[celery] results = true`: Celery's result table as its backend makes it, named to every
    /// function, which may write items there and nothing else; a Celery queue's SQS name is
    /// kombu's.
    #[test]
    fn celery_results_and_queue_names_are_deployed() {
        let text = format!(
            "{TRICKY}\n[queues.default]\ncelery_queue = \"app.default\"\ncelery_queue_name_prefix = \"prod.\"\n\n\
             [celery]\nresults = true\nresults_table = \"app-results\"\nresult_expires = 86400\n"
        );
        let manifest = manifest(&text);
        let template = render(&manifest, &RenderOptions::default()).unwrap();
        let table = template.resource(CELERY_RESULT_TABLE_ID).unwrap().to_json();
        assert_eq!(table["Properties"]["TableName"], "app-results");
        assert_eq!(table["Properties"]["KeySchema"], serde_json::json!([{"AttributeName": "id", "KeyType": "HASH"}]));
        assert_eq!(table["Properties"]["TimeToLiveSpecification"]["AttributeName"], "ttl");
        for module in manifest.modules.keys() {
            let function = template.resource(&ModuleIds::new(module).function).unwrap().to_json();
            let variables = &function["Properties"]["Environment"]["Variables"];
            assert_eq!(variables[ENV_CELERY_RESULTS_TABLE], serde_json::json!({"Ref": CELERY_RESULT_TABLE_ID}));
            let grants: Vec<_> =
                statements(&template, module).into_iter().filter(|(sid, _, _)| sid == "CeleryResults").collect();
            assert_eq!(grants.len(), 1, "{module}");
            assert_eq!(grants[0].1, vec!["dynamodb:PutItem".to_owned()]);
            assert!(grants[0].2.contains(CELERY_RESULT_TABLE_ID), "{:?}", grants[0]);
        }
        let queue = template.resource(&ModuleIds::new("user").queue).unwrap().to_json();
        assert_eq!(queue["Properties"]["QueueName"], "prod-app-default");
        assert_eq!(manifest.sqs_queue_name("default"), "prod-app-default");

        // Without the switch: nothing of it.
        let plain = render(&self::manifest(TRICKY), &RenderOptions::default()).unwrap();
        assert!(plain.resource(CELERY_RESULT_TABLE_ID).is_none());
        assert!(!plain.to_yaml().contains(ENV_CELERY_RESULTS_TABLE));
    }

    #[test]
    fn rendering_is_deterministic_and_names_resources_as_the_runtime_does() {
        let manifest = manifest(REPO_MANIFEST);
        let first = render(&manifest, &RenderOptions::default()).unwrap().to_yaml();
        let second = render(&manifest.clone(), &RenderOptions::default()).unwrap().to_yaml();
        assert_eq!(first, second);
        assert!(first.starts_with(HEADER));
        assert!(first.contains(&format!("TableName: {}\n", manifest.table_name())));
        for queue in manifest.queue_names() {
            assert!(first.contains(&format!("QueueName: {}\n", manifest.sqs_queue_name(queue))));
            assert!(first.contains(&format!("QueueName: {}\n", manifest.sqs_dlq_name(queue))));
        }
    }

    #[test]
    fn refuses_what_aws_would_refuse_with_a_hint() {
        let cases = [
            ("max_concurrency = 3", "max_concurrency = 1", "max_concurrency 1"),
            ("max_concurrency = 3", "max_concurrency = 3\nbatch_size = 50", "batching window"),
            ("max_concurrency = 3", "max_concurrency = 3\nmemory = 64", "memory 64"),
            ("sends_to = [\"alerts\"]", "sends_to = [\"nft\"]", "queue `nft`"),
            ("secrets = [\"ALERT_TOKEN\"]", "secrets = [\"alert-token\"]", "not an environment variable"),
            ("secrets = [\"ALERT_TOKEN\"]", "secrets = [\"AWS_REGION\"]", "prefix"),
            ("secrets = [\"ALERT_TOKEN\"]", "secrets = [\"APP_API_BASE\"]", "deployed differently"),
            ("name = \"tb\"", &format!("name = \"{}\"", "x".repeat(70)), "valid"),
            (
                "expression = \"rate(1 hour)\"\nqueue = \"alerts\"",
                "expression = \"rate(1 hour)\"\nqueue = \"nowhere\"",
                "no module consumes",
            ),
        ];
        for (from, to, expected) in cases {
            let text = TRICKY.replacen(from, to, 1);
            assert_ne!(text, TRICKY, "case {to} did not apply");
            // Whether the manifest or the rendering refuses it, the message says what is wrong.
            let err = match Manifest::parse(&text, "test") {
                Ok(manifest) => render(&manifest, &RenderOptions::default()).unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(expected), "{to}: {err}");
        }
        let clash =
            TRICKY.replace("[modules.alert]", "[modules.user_]\ncrate = \"x\"\nqueue = \"other\"\n\n[modules.alert]");
        let err = render(&manifest(&clash), &RenderOptions::default()).unwrap_err().to_string();
        assert!(err.contains("template id `UserDeadLetterQueue`") || err.contains("template id"), "{err}");
    }

    #[test]
    fn settings_become_parameters_and_optional_ones_stay_unset_when_empty() {
        let manifest = manifest(TRICKY);
        let json = render(&manifest, &RenderOptions::default()).unwrap().root().to_json();
        let parameters = &json["Parameters"];
        assert_eq!(parameters["AppApiBase"]["MinLength"], 1);
        assert!(parameters["AppApiBase"].get("Default").is_none(), "a required setting has no default");
        assert_eq!(parameters["AppApiTimeoutSecs"]["Default"], "");
        assert_eq!(parameters["AlertTokenSecret"]["Default"], "tb/ALERT_TOKEN");
        assert!(parameters.get("AlertToken").is_none(), "a secret is never a plain parameter");
        assert_eq!(
            json["Conditions"]["AppApiTimeoutSecsIsSet"],
            serde_json::json!({"Fn::Not": [{"Fn::Equals": [{"Ref": "AppApiTimeoutSecs"}, ""]}]})
        );
        let env = &json["Resources"]["UserFunction"]["Properties"]["Environment"]["Variables"];
        assert_eq!(
            env["APP_API_TIMEOUT_SECS"],
            serde_json::json!({"Fn::If": ["AppApiTimeoutSecsIsSet", {"Ref": "AppApiTimeoutSecs"}, {"Ref": "AWS::NoValue"}]})
        );
        let alert_env = &json["Resources"]["AlertFunction"]["Properties"]["Environment"]["Variables"];
        assert_eq!(alert_env["ALERT_TOKEN"]["Fn::Sub"], "{{resolve:secretsmanager:${AlertTokenSecret}:SecretString}}");
        assert!(alert_env.get("APP_API_BASE").is_none(), "a module gets only its own settings");
        assert_eq!(alert_env[ENV_SECRETS_REVISION]["Ref"], SECRETS_REVISION_PARAMETER);
        assert!(env.get(ENV_SECRETS_REVISION).is_none(), "only functions with secrets re-read them");
        assert_eq!(parameters[SECRETS_REVISION_PARAMETER]["Default"], "1");
    }

    #[test]
    fn logical_ids_are_pascal_case() {
        assert_eq!(logical_id("nft-fair"), "NftFair");
        assert_eq!(logical_id("user"), "User");
        assert_eq!(logical_id("daily_report.v2"), "DailyReportV2");
        assert_eq!(setting_parameter("APP_API_BASE"), "AppApiBase");
        assert_eq!(secret_parameter("CHAT_API_KEY"), "ChatApiKeySecret");
    }

    #[test]
    fn the_transformer_emulation_fills_quoted_and_bare_placeholders() {
        let paths = vec![("id".to_owned(), "$.id".to_owned()), ("n".to_owned(), "$.detail.n".to_owned())];
        let event = serde_json::json!({"id": "abc", "detail": {"n": [1, "x"]}});
        let out = eventbridge_input(&paths, r#"{"a":"<id> and \"<id>\"","b":<n>,"c":"<other>"}"#, &event).unwrap();
        assert_eq!(out, r#"{"a":"abc and \"abc\"","b":[1,"x"],"c":"<other>"}"#);
        assert!(eventbridge_input(&[("x".into(), "$.missing".into())], "<x>", &event).is_err());
    }
}
