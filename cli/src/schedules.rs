//! `taskbeat schedules`: the manifest's beat schedules with their EventBridge expressions and
//! next fire times; `run NAME` sends one now; `enable|disable NAME` switches its deployed rule.
//! Also the beat of `taskbeat local`.

use std::fmt::Write;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, Local, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use taskbeat::backend::load_sdk_config;
use taskbeat::local::beat::{Beat, SystemClock};
use taskbeat::manifest::CronField;
use taskbeat::manifest::ScheduleSpec;
use taskbeat::schedule::expression::Kind;
use taskbeat::schedule::{RuleInfo, Rules, eventbridge_expression, next_fire_times, schedule_of};
use taskbeat::{Client, SendOptions};

use crate::{Output, Setup, hostname, modules};

/// How many upcoming fire times the listing shows.
const UPCOMING: usize = 3;

#[derive(Debug, Args)]
pub struct SchedulesArgs {
    #[command(subcommand)]
    action: Option<Action>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// List the schedules (the default).
    List,
    /// Send a schedule's task now, with its arguments; prints the task id.
    Run {
        /// Schedule name (a [schedules.NAME] table of taskbeat.toml).
        name: String,
    },
    /// Enable the schedule's deployed EventBridge rule (needs --aws).
    Enable {
        /// Schedule name.
        name: String,
    },
    /// Disable the schedule's deployed EventBridge rule (needs --aws).
    Disable {
        /// Schedule name.
        name: String,
    },
}

pub async fn run(setup: Setup, args: SchedulesArgs, output: Output, aws: bool) -> Result<i32> {
    match args.action.unwrap_or(Action::List) {
        Action::List => list(&setup, output, aws).await,
        Action::Run { name } => run_now(&setup, &name, output).await,
        Action::Enable { name } => switch(&setup, &name, true, output, aws).await,
        Action::Disable { name } => switch(&setup, &name, false, output, aws).await,
    }
}

fn spec<'a>(setup: &'a Setup, name: &str) -> Result<&'a ScheduleSpec> {
    setup.manifest.schedules.get(name).ok_or_else(|| {
        let known: Vec<&str> = setup.manifest.schedules.keys().map(String::as_str).collect();
        let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        anyhow!("no schedule `{name}` in {} (schedules: {known})", setup.manifest_origin)
    })
}

/// Whether a linked module consuming the task's queue registers the task.
pub fn registered(setup: &Setup, spec: &ScheduleSpec) -> bool {
    let queue = spec.queue.as_deref().unwrap_or_else(|| setup.manifest.route(&spec.task));
    setup
        .manifest
        .module_for_queue(queue)
        .and_then(|(_, module)| modules::registry_for(&module.crate_name))
        .is_some_and(|registry| registry.get(&spec.task).is_some())
}

/// The beat of `taskbeat local`, with its banner line; none with --no-schedules or --aws.
pub fn local_beat(setup: &Setup, no_schedules: bool, aws: bool) -> Result<Option<taskbeat::local::beat::Beat>> {
    if setup.manifest.schedules.is_empty() {
        return Ok(None);
    }
    if no_schedules || aws {
        let why = if aws { "--aws: the deployed EventBridge rules fire them" } else { "--no-schedules" };
        eprintln!("  beat:     off ({why})");
        return Ok(None);
    }
    let client = Client::new(setup.manifest.clone(), setup.backend.clone(), format!("taskbeat-beat@{}", hostname()));
    let beat = Beat::from_manifest(&setup.manifest, client, Arc::new(SystemClock))?;
    let names: Vec<&str> = beat.entries().iter().map(|e| e.name.as_str()).collect();
    eprintln!("  beat:     {} (taskbeat schedules shows when; --no-schedules turns them off)", names.join(", "));
    for (name, spec) in setup.manifest.schedules.iter().filter(|(_, s)| s.enabled) {
        if !registered(setup, spec) {
            eprintln!(
                "  warning:  schedule {name} sends {}, which no linked module registers (dead-lettered)",
                spec.task
            );
        }
    }
    Ok(Some(beat))
}

/// Every schedule with its expression and next fire times (and, with --aws, its deployed rule),
/// as `schedules --output json` prints them and the dashboard serves them.
pub async fn schedules_json(setup: &Setup, aws: bool) -> Result<Vec<Value>> {
    Ok(rows(setup, aws).await?.iter().map(Row::json).collect())
}

async fn rows(setup: &Setup, aws: bool) -> Result<Vec<Row<'_>>> {
    let now = Utc::now();
    let rules = if aws { Some(Rules::new(&load_sdk_config().await)) } else { None };
    let mut rows = Vec::new();
    for (name, spec) in &setup.manifest.schedules {
        let expression = eventbridge_expression(spec).map_err(|e| anyhow!("schedule `{name}`: {e}"))?;
        let schedule = schedule_of(spec).map_err(|e| anyhow!("schedule `{name}`: {e}"))?;
        let rule = setup.manifest.rule_name(name);
        let deployed = match &rules {
            Some(rules) => Some(rules.describe(&rule).await.map_err(|e| anyhow!("{e}"))?),
            None => None,
        };
        rows.push(Row {
            name,
            spec,
            queue: spec.queue.clone().unwrap_or_else(|| setup.manifest.route(&spec.task).to_owned()),
            expression,
            describe: celery_form(spec).unwrap_or_else(|| match schedule.kind() {
                Kind::Rate(_) => schedule.describe(),
                Kind::Cron(_) => "UTC".to_owned(),
            }),
            is_rate: matches!(schedule.kind(), Kind::Rate(_)),
            rule,
            registered: registered(setup, spec),
            next: next_fire_times(&schedule, now, UPCOMING),
            deployed,
        });
    }
    Ok(rows)
}

async fn list(setup: &Setup, output: Output, aws: bool) -> Result<i32> {
    let rows = rows(setup, aws).await?;
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&rows.iter().map(Row::json).collect::<Vec<_>>())?),
        Output::Table if rows.is_empty() => {
            outln!("no schedules in {} (add [schedules.NAME] tables)", setup.manifest_origin);
        }
        Output::Table => {
            let text: Vec<String> = rows.iter().map(Row::table).collect();
            out!("{}", text.join("\n"));
        }
    }
    Ok(0)
}

/// The crontab as Celery code would write it, for people migrating.
fn celery_form(spec: &ScheduleSpec) -> Option<String> {
    let fields = [
        ("minute", &spec.minute),
        ("hour", &spec.hour),
        ("day_of_week", &spec.day_of_week),
        ("day_of_month", &spec.day_of_month),
        ("month_of_year", &spec.month_of_year),
    ];
    let given: Vec<String> = fields
        .iter()
        .filter_map(|(name, field)| {
            field.as_ref().map(|f| match f {
                CronField::Number(n) => format!("{name}={n}"),
                CronField::Text(t) => format!("{name}='{t}'"),
                CronField::List(l) => format!("{name}={l:?}"),
            })
        })
        .collect();
    (!given.is_empty()).then(|| format!("crontab({}), UTC", given.join(", ")))
}

struct Row<'a> {
    name: &'a str,
    spec: &'a ScheduleSpec,
    queue: String,
    expression: String,
    describe: String,
    is_rate: bool,
    rule: String,
    registered: bool,
    next: Vec<DateTime<Utc>>,
    /// With --aws: the deployed rule, `None` inside when it is not deployed.
    deployed: Option<Option<RuleInfo>>,
}

fn utc(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn local(t: &DateTime<Utc>) -> String {
    t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S %:z").to_string()
}

impl Row<'_> {
    fn json(&self) -> Value {
        let iso = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let local_iso = |t: DateTime<Utc>| t.with_timezone(&Local).to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut row = json!({
            "name": self.name,
            "task": self.spec.task,
            "queue": self.queue,
            "args": self.spec.args,
            "kwargs": self.spec.kwargs,
            "expression": self.expression,
            "description": self.describe,
            "rule": self.rule,
            "enabled": self.spec.enabled,
            "task_registered": self.registered,
            "next": self.next.iter().copied().map(iso).collect::<Vec<_>>(),
            "next_local": self.next.iter().copied().map(local_iso).collect::<Vec<_>>(),
        });
        // Only with --aws: null when the rule is not deployed.
        if let Some(deployed) = &self.deployed {
            row["deployed"] = match deployed {
                Some(info) => json!({ "enabled": info.enabled, "expression": info.schedule_expression }),
                None => Value::Null,
            };
        }
        row
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}  {}  ({})", self.name, self.expression, self.describe);
        let _ = writeln!(out, "  task    {} -> queue {}", self.spec.task, self.queue);
        let mut call = Value::Array(self.spec.args.clone()).to_string();
        if !self.spec.kwargs.is_empty() {
            let _ = write!(call, " {}", Value::Object(self.spec.kwargs.clone()));
        }
        if call.chars().count() > 100 {
            call = format!("{}… (--output json for all)", call.chars().take(100).collect::<String>());
        }
        let _ = writeln!(out, "  args    {call}");
        let state = if self.spec.enabled { "enabled" } else { "disabled in taskbeat.toml" };
        let deployed = match &self.deployed {
            None => String::new(),
            Some(None) => ", not deployed".to_owned(),
            Some(Some(info)) => {
                let state = if info.enabled { "ENABLED" } else { "DISABLED" };
                match &info.schedule_expression {
                    Some(e) if *e != self.expression => format!(", deployed {state} with {e} (differs)"),
                    _ => format!(", deployed {state}"),
                }
            }
        };
        let _ = writeln!(out, "  rule    {} ({state}{deployed})", self.rule);
        for (i, t) in self.next.iter().enumerate() {
            let label = if i == 0 { "next" } else { "" };
            let _ = writeln!(out, "  {label:<6}  {}   local {}", utc(t), local(t));
        }
        if self.next.is_empty() {
            let _ = writeln!(out, "  next    (never again)");
        }
        if self.is_rate {
            let _ = writeln!(out, "          (a rate counts from when its rule was deployed; shown from now)");
        }
        if !self.registered {
            let _ = writeln!(
                out,
                "  warning no linked module registers {} on queue {}: its messages would be dead-lettered",
                self.spec.task, self.queue
            );
        }
        out
    }
}

/// Sends a schedule's task now, with its arguments.
pub async fn send_now(setup: &Setup, name: &str) -> Result<uuid::Uuid> {
    let spec = spec(setup, name)?;
    if !registered(setup, spec) {
        bail!(
            "schedule `{name}` sends `{}`, which no linked module registers on its queue (it would be dead-lettered); \
             `taskbeat send {} --unchecked` sends it anyway",
            spec.task,
            spec.task
        );
    }
    let client = Client::new(setup.manifest.clone(), setup.backend.clone(), format!("taskbeat-cli@{}", hostname()));
    let options = SendOptions { queue: spec.queue.clone(), ..SendOptions::default() };
    Ok(client.send(&spec.task, spec.args.clone(), spec.kwargs.clone(), options).await?)
}

async fn run_now(setup: &Setup, name: &str, output: Output) -> Result<i32> {
    let id = send_now(setup, name).await?;
    let spec = spec(setup, name)?;
    match output {
        Output::Json => outln!("{}", json!({ "id": id, "schedule": name, "task": spec.task })),
        Output::Table => outln!("{id}"),
    }
    Ok(0)
}

/// Enables or disables a schedule's deployed EventBridge rule.
pub async fn set_rule_enabled(setup: &Setup, name: &str, enabled: bool, aws: bool) -> Result<RuleInfo> {
    spec(setup, name)?;
    let rule = setup.manifest.rule_name(name);
    let verb = if enabled { "enable" } else { "disable" };
    if !aws {
        bail!(
            "`schedules {verb}` switches the deployed EventBridge rule `{rule}`: add --aws (with AWS_REGION set). \
             For `taskbeat local`, set `enabled` in taskbeat.toml or run it with --no-schedules"
        );
    }
    let sdk = load_sdk_config().await;
    if sdk.region().is_none() {
        bail!("--aws needs a region: set AWS_REGION (and AWS_ENDPOINT_URL for an emulator)");
    }
    Ok(Rules::new(&sdk).set_enabled(&rule, enabled).await?)
}

async fn switch(setup: &Setup, name: &str, enabled: bool, output: Output, aws: bool) -> Result<i32> {
    let info = set_rule_enabled(setup, name, enabled, aws).await?;
    let state = if info.enabled { "ENABLED" } else { "DISABLED" };
    match output {
        Output::Json => outln!("{}", json!({ "schedule": name, "rule": info.name, "enabled": info.enabled })),
        Output::Table => outln!("{}: {state}", info.name),
    }
    if setup.manifest.schedules.get(name).is_some_and(|s| s.enabled != enabled) {
        eprintln!(
            "note: taskbeat.toml says `enabled = {}` for `{name}`; the next deploy sets the rule back to that",
            !enabled
        );
    }
    Ok(0)
}
