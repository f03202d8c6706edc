//! What Flower and `celery inspect` gave an operator: `list`, `status` (with the state
//! history), `queues`, `dlq list|show|redrive`, `retry`, `purge`, `inspect registered` and
//! `completions`. Every command works on both backends and prints a table (coloured on a
//! terminal) or stable JSON (`--output json`, documented in the README).

use std::io::{BufRead, IsTerminal, Write as _};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use clap::{Args, CommandFactory, Subcommand};
use serde_json::{Value, json};
use taskbeat::backend::QueuePair;
use taskbeat::queue::dead_letters::{self, DeadLetter, RecordFate, RedriveError, RedriveReport, Selection};
use taskbeat::record::{HISTORY_LIMIT, TaskRecord, iso};
use taskbeat::store::{ListCursor, ListFilter, ListPage, list_tasks};
use taskbeat::{Client, SendOptions, TaskState};
use uuid::Uuid;

use crate::output::{human, record_table};
use crate::{Output, Setup, find_manifest, hostname, modules};

/// Dead letters `dlq list` shows per queue unless told otherwise.
const DEFAULT_DLQ_LIMIT: usize = 100;
/// A task is retried at most once in this window (a second request is refused).
const RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest reason `dlq list` prints in a table (`dlq show` prints it whole).
const REASON_WIDTH: usize = 100;

// ---------------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks in this state (PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE, REVOKED).
    #[arg(long)]
    state: Option<TaskState>,
    /// Only tasks of this name.
    #[arg(long)]
    task: Option<String>,
    /// Only tasks sent within this long (30s, 15m, 1h, 7d) or since this time (RFC 3339).
    #[arg(long, value_parser = parse_since)]
    since: Option<DateTime<Utc>>,
    /// Tasks per page.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    limit: u16,
    /// Start after this point: the `next` value of the previous page.
    #[arg(long)]
    cursor: Option<ListCursor>,
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    action: DlqAction,
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// Dead letters of every queue (or one), with the reason each was dead-lettered. They stay
    /// where they are (on SQS, which has no peek, each is received and released at once).
    List {
        /// Only this queue's dead letters (a queue of the manifest, e.g. default).
        #[arg(long)]
        queue: Option<String>,
        /// At most this many per queue.
        #[arg(long, default_value_t = DEFAULT_DLQ_LIMIT)]
        limit: usize,
    },
    /// One dead letter in full: body, attributes, reason.
    Show {
        /// Its message id (from `dlq list`).
        #[arg(long)]
        message: String,
        /// The queue whose DLQ holds it (default: look in every one).
        #[arg(long)]
        queue: Option<String>,
    },
    /// Move dead letters back to their queue, body and attributes intact.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["message", "all"])))]
    Redrive {
        /// The queue whose dead letters move (default: every queue with --all; the one that
        /// holds the message with --message).
        #[arg(long)]
        queue: Option<String>,
        /// Only this dead letter.
        #[arg(long)]
        message: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The id of a FAILURE or REVOKED task.
    #[arg(value_parser = crate::parse_task_id)]
    id: Uuid,
    /// Then watch the new task until it finishes.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// The queue (a queue of the manifest, e.g. default; `default-dlq` for its DLQ).
    queue: String,
    /// Purge the queue's dead-letter queue instead.
    #[arg(long)]
    dlq: bool,
    /// Do not ask (for scripts); without it, the purge is confirmed on the terminal.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(subcommand)]
    what: InspectWhat,
}

#[derive(Debug, Subcommand)]
enum InspectWhat {
    /// The tasks of every module linked into this binary, with their parameters and options.
    Registered,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

// ---------------------------------------------------------------------------------------------
// Presentation helpers

/// Whether tables get colours: on a terminal, unless NO_COLOR is set.
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn state_colour(state: TaskState) -> &'static str {
    match state {
        TaskState::Pending => "2",
        TaskState::Started | TaskState::Progress => "36",
        TaskState::Retry => "33",
        TaskState::Success => "32",
        TaskState::Failure => "31",
        TaskState::Revoked => "35",
    }
}

/// A table cell: text, and an ANSI colour for terminals.
struct Cell {
    text: String,
    colour: Option<&'static str>,
    right: bool,
}

impl Cell {
    fn plain(text: impl Into<String>) -> Self {
        Cell { text: text.into(), colour: None, right: false }
    }

    fn number(text: impl ToString) -> Self {
        Cell { text: text.to_string(), colour: None, right: true }
    }

    fn state(state: TaskState) -> Self {
        Cell { text: state.to_string(), colour: Some(state_colour(state)), right: false }
    }
}

/// Columns padded to their widest cell (the last one is not padded), headers in bold.
fn table(headers: &[&str], rows: &[Vec<Cell>], colour: bool) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| rows.iter().map(|r| r[i].text.chars().count()).chain([headers[i].chars().count()]).max().unwrap_or(0))
        .collect();
    let paint = |text: String, code: Option<&str>| match code {
        Some(code) if colour => format!("\x1b[{code}m{text}\x1b[0m"),
        _ => text,
    };
    let last = headers.len() - 1;
    let line = |cells: Vec<(String, Option<&str>, bool)>| {
        let parts: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, (text, code, right))| {
                let pad = widths[i].saturating_sub(text.chars().count());
                let padded = match (right, i == last) {
                    (true, _) => format!("{}{text}", " ".repeat(pad)),
                    (false, false) => format!("{text}{}", " ".repeat(pad)),
                    (false, true) => text,
                };
                paint(padded, code)
            })
            .collect();
        format!("{}\n", parts.join("  ").trim_end())
    };
    let mut out = line(headers.iter().map(|h| ((*h).to_owned(), Some("1"), false)).collect());
    for row in rows {
        out.push_str(&line(row.iter().map(|c| (c.text.clone(), c.colour, c.right)).collect()));
    }
    out
}

fn shorten(text: &str, width: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= width {
        one_line
    } else {
        format!("{}…", one_line.chars().take(width.saturating_sub(1)).collect::<String>())
    }
}

fn print_json(value: &Value) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `30s`, `15m`, `1h`, `7d`, `2w` ago, or an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit.trim() {
        "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 604_800,
        _ => 0,
    };
    let ago = number
        .parse::<i64>()
        .ok()
        .filter(|_| seconds_per_unit > 0)
        .map(|n| n.checked_mul(seconds_per_unit).and_then(chrono::Duration::try_seconds));
    match ago {
        Some(Some(ago)) => {
            Utc::now().checked_sub_signed(ago).ok_or_else(|| format!("`{text}` reaches back before any date there is"))
        }
        Some(None) => Err(format!("`{text}` reaches back before any date there is")),
        None => Err(format!(
            "`{text}` is neither a duration (30s, 15m, 1h, 7d, 2w) nor an RFC 3339 time (2026-12-03T09:00:00Z)"
        )),
    }
}

fn no_task(setup: &Setup, id: Uuid) -> anyhow::Error {
    anyhow!("no task {id} in {}; was it sent to this backend (--aws, --data-dir)?", setup.backend.location)
}

/// A queue named on the command line: a manifest queue (`default`), its DLQ (`default-dlq`),
/// or either by its backend name (`taskbeat-default`, `taskbeat-default-dlq`).
fn resolve_queue<'a>(setup: &'a Setup, name: &str) -> Result<(&'a str, &'a QueuePair, bool)> {
    for (queue, pair) in &setup.backend.queues {
        if name == queue || name == pair.queue.name() {
            return Ok((queue, pair, false));
        }
        if name == format!("{queue}-dlq") || name == pair.dead_letters.name() {
            return Ok((queue, pair, true));
        }
    }
    let known: Vec<&str> = setup.backend.queues.keys().map(String::as_str).collect();
    bail!("no queue `{name}` in {} (queues: {})", setup.manifest_origin, known.join(", "))
}

/// The queues a `--queue` option selects: that one, or all.
fn selected_queues<'a>(setup: &'a Setup, queue: Option<&str>) -> Result<Vec<(&'a str, &'a QueuePair)>> {
    match queue {
        Some(name) => {
            let (queue, pair, _) = resolve_queue(setup, name)?;
            Ok(vec![(queue, pair)])
        }
        None => Ok(setup.backend.queues.iter().map(|(q, p)| (q.as_str(), p)).collect()),
    }
}

/// On SQS, looking at a dead letter receives it.
fn note_sqs_peek(aws: bool) {
    if aws {
        eprintln!(
            "note: SQS has no peek: each dead letter shown was received and released at once (its receive count went up by one)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// list

fn duration_of(record: &TaskRecord, now: DateTime<Utc>) -> Option<chrono::Duration> {
    match (record.started_at, record.finished_at) {
        (Some(started), Some(finished)) => Some(finished - started),
        (Some(started), None) if matches!(record.state, TaskState::Started | TaskState::Progress) => {
            Some(now - started)
        }
        _ => None,
    }
}

/// One task of a listing, as `list --output json` prints it.
fn list_entry(record: &TaskRecord, now: DateTime<Utc>) -> Value {
    json!({
        "id": record.id,
        "task": record.task,
        "queue": record.queue,
        "state": record.state,
        "progress": record.progress,
        "status": record.status,
        "retries": record.retries,
        "created_at": iso(record.created_at),
        "started_at": record.started_at.map(iso),
        "finished_at": record.finished_at.map(iso),
        "age_ms": (now - record.created_at).num_milliseconds().max(0),
        "duration_ms": duration_of(record, now).map(|d| d.num_milliseconds().max(0)),
        "error": record.error,
        "parent_id": record.parent_id,
    })
}

/// One page of tasks as `list --output json` prints it (and the dashboard serves it).
pub fn list_json(page: &ListPage, now: DateTime<Utc>) -> Value {
    json!({
        "tasks": page.records.iter().map(|r| list_entry(r, now)).collect::<Vec<_>>(),
        "next": page.next.as_ref().map(ToString::to_string),
    })
}

pub async fn list(setup: Setup, args: ListArgs, output: Output) -> Result<i32> {
    let filter = ListFilter { state: args.state, task: args.task.clone(), since: args.since };
    let page = list_tasks(setup.backend.store.as_ref(), &filter, args.cursor.as_ref(), usize::from(args.limit)).await?;
    let now = Utc::now();
    match output {
        Output::Json => print_json(&list_json(&page, now))?,
        Output::Table if page.records.is_empty() => {
            let what = match (&args.task, args.state) {
                (Some(task), Some(state)) => format!("{state} tasks named {task}"),
                (Some(task), None) => format!("tasks named {task}"),
                (None, Some(state)) => format!("{state} tasks"),
                (None, None) => "tasks".to_owned(),
            };
            let when = args.since.map(|s| format!(" since {}", iso(s))).unwrap_or_default();
            outln!("no {what}{when} in {}", setup.backend.location);
        }
        Output::Table => {
            let rows: Vec<Vec<Cell>> = page
                .records
                .iter()
                .map(|r| {
                    let running = !r.state.is_terminal() && r.finished_at.is_none() && r.started_at.is_some();
                    let duration = duration_of(r, now)
                        .map(|d| if running { format!("{} so far", human(d)) } else { human(d) })
                        .unwrap_or_else(|| "-".into());
                    vec![
                        Cell::plain(r.id.to_string()),
                        Cell::state(r.state),
                        Cell::number(format!("{}%", r.progress)),
                        Cell::number(human(now - r.created_at)),
                        Cell::number(duration),
                        Cell::plain(&r.task),
                    ]
                })
                .collect();
            out!("{}", table(&["ID", "STATE", "PROGRESS", "AGE", "DURATION", "TASK"], &rows, colour()));
            if let Some(next) = page.next {
                outln!("more: add --cursor {next}");
            }
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// status

/// The record and its history: every state change with its time.
pub async fn status(setup: Setup, id: Uuid, output: Output) -> Result<i32> {
    let record = setup.backend.store.get(id).await?.ok_or_else(|| no_task(&setup, id))?;
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&record)?),
        Output::Table => {
            let colour = colour();
            out!("{}", record_table(&record));
            if record.history.is_empty() {
                outln!("history    (none kept: the record was written by an older taskbeat)");
            }
            let mut previous: Option<DateTime<Utc>> = None;
            for (i, change) in record.history.iter().enumerate() {
                let label = if i == 0 { "history" } else { "" };
                let state = format!("{:<8}", change.state.as_str());
                let state = if colour { format!("\x1b[{}m{state}\x1b[0m", state_colour(change.state)) } else { state };
                let after = previous.map(|p| format!("  +{}", human(change.at - p))).unwrap_or_default();
                let line = format!("{label:<10} {}  {state}{after}", iso(change.at));
                outln!("{}", line.trim_end());
                previous = Some(change.at);
            }
            if record.history.len() >= taskbeat::record::HISTORY_TRIMMED_TO {
                outln!("{:<10} (a record keeps its last {HISTORY_LIMIT} state changes at most)", "");
            }
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// queues

/// Per module: its queue's depths and its DLQ's, as `queues --output json` prints them.
pub async fn queue_entries(setup: &Setup) -> Result<Vec<Value>> {
    let mut entries = Vec::new();
    for (module, settings) in &setup.manifest.modules {
        let pair = setup
            .backend
            .queue(&settings.queue)
            .ok_or_else(|| anyhow!("module {module}: no queue `{}` in the backend", settings.queue))?;
        let depth = pair.queue.depth().await?;
        let dead = pair.dead_letters.depth().await?;
        entries.push(json!({
            "module": module,
            "queue": settings.queue,
            "name": pair.queue.name(),
            "waiting": depth.visible,
            "in_flight": depth.in_flight,
            "delayed": depth.delayed,
            "dlq": dead.visible + dead.in_flight + dead.delayed,
            "dlq_name": pair.dead_letters.name(),
        }));
    }
    Ok(entries)
}

pub async fn queues(setup: Setup, output: Output) -> Result<i32> {
    let entries = queue_entries(&setup).await?;
    match output {
        Output::Json => print_json(&Value::Array(entries))?,
        Output::Table => {
            let colour = colour();
            let rows: Vec<Vec<Cell>> = entries
                .iter()
                .map(|e| {
                    let count = |key: &str| e[key].as_u64().unwrap_or(0);
                    let mut dlq = Cell::number(count("dlq"));
                    if count("dlq") > 0 {
                        dlq.colour = Some("31");
                    }
                    vec![
                        Cell::plain(e["module"].as_str().unwrap_or_default()),
                        Cell::plain(e["name"].as_str().unwrap_or_default()),
                        Cell::number(count("waiting")),
                        Cell::number(count("in_flight")),
                        Cell::number(count("delayed")),
                        dlq,
                    ]
                })
                .collect();
            out!("{}", table(&["MODULE", "QUEUE", "WAITING", "IN FLIGHT", "DELAYED", "DLQ"], &rows, colour));
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// dlq

/// A dead letter as `dlq list --output json` prints it (`dlq show` adds body and attributes).
fn dead_letter_entry(queue: &str, pair: &QueuePair, dead: &DeadLetter, full: bool) -> Value {
    let mut entry = json!({
        "queue": queue,
        "dlq": pair.dead_letters.name(),
        "message_id": dead.message_id,
        "task_id": dead.task_id,
        "task": dead.task,
        "reason": dead.reason,
        "source_queue": dead.source_queue,
        "group_id": dead.group_id,
        "receive_count": dead.receive_count,
        "sent_at": iso(dead.sent_at),
    });
    if full && let Some(map) = entry.as_object_mut() {
        map.insert("body".into(), Value::String(dead.body.clone()));
        map.insert("attributes".into(), json!(dead.attributes));
    }
    entry
}

pub async fn dlq(setup: Setup, args: DlqArgs, output: Output, aws: bool) -> Result<i32> {
    match args.action {
        DlqAction::List { queue, limit } => dlq_list(&setup, queue.as_deref(), limit, output, aws).await,
        DlqAction::Show { message, queue } => dlq_show(&setup, &message, queue.as_deref(), output, aws).await,
        DlqAction::Redrive { queue, message, all: _ } => dlq_redrive(&setup, queue.as_deref(), message, output).await,
    }
}

/// The dead letters of one queue or all, without consuming them.
pub async fn find_dead_letters<'a>(
    setup: &'a Setup,
    queue: Option<&str>,
    limit: usize,
) -> Result<Vec<(&'a str, &'a QueuePair, DeadLetter)>> {
    let mut found = Vec::new();
    for (queue, pair) in selected_queues(setup, queue)? {
        let letters = dead_letters::look(pair.dead_letters.as_ref(), limit).await?;
        found.extend(letters.into_iter().map(|d| (queue, pair, d)));
    }
    Ok(found)
}

/// Dead letters as `dlq list --output json` prints them.
pub fn dead_letters_json(found: &[(&str, &QueuePair, DeadLetter)]) -> Value {
    Value::Array(found.iter().map(|(q, pair, dead)| dead_letter_entry(q, pair, dead, false)).collect())
}

async fn dlq_list(setup: &Setup, queue: Option<&str>, limit: usize, output: Output, aws: bool) -> Result<i32> {
    let found = find_dead_letters(setup, queue, limit).await?;
    note_sqs_peek(aws);
    match output {
        Output::Json => print_json(&dead_letters_json(&found))?,
        Output::Table if found.is_empty() => outln!("no dead letters"),
        Output::Table => {
            let now = Utc::now();
            let rows: Vec<Vec<Cell>> = found
                .iter()
                .map(|(queue, _, dead)| {
                    let reason = dead.reason.as_deref().unwrap_or("(moved by SQS after its max receive count)");
                    vec![
                        Cell::plain(*queue),
                        Cell::plain(&dead.message_id),
                        Cell::plain(dead.task_id.map_or("-".into(), |id| id.to_string())),
                        Cell::plain(dead.task.as_deref().unwrap_or("-")),
                        Cell::number(human(now - dead.sent_at)),
                        Cell::plain(shorten(reason, REASON_WIDTH)),
                    ]
                })
                .collect();
            out!("{}", table(&["QUEUE", "MESSAGE ID", "TASK ID", "TASK", "AGE", "REASON"], &rows, colour()));
        }
    }
    Ok(0)
}

async fn dlq_show(setup: &Setup, message: &str, queue: Option<&str>, output: Output, aws: bool) -> Result<i32> {
    let mut searched = Vec::new();
    for (queue, pair) in selected_queues(setup, queue)? {
        searched.push(pair.dead_letters.name().to_owned());
        let letters = dead_letters::look(pair.dead_letters.as_ref(), dead_letters::REDRIVE_LOOK_LIMIT).await?;
        let Some(dead) = letters.into_iter().find(|d| d.message_id == message) else { continue };
        note_sqs_peek(aws);
        match output {
            Output::Json => print_json(&dead_letter_entry(queue, pair, &dead, true))?,
            Output::Table => {
                let row = |key: &str, value: &str| outln!("{key:<12} {value}");
                row("message", &dead.message_id);
                row("queue", &format!("{queue} (dead letter in {})", pair.dead_letters.name()));
                row("reason", dead.reason.as_deref().unwrap_or("(none: moved by SQS after its max receive count)"));
                row("task id", &dead.task_id.map_or("-".into(), |id| id.to_string()));
                row("task", dead.task.as_deref().unwrap_or("-"));
                if let Some(group) = &dead.group_id {
                    row("group", group);
                }
                row("receives", &dead.receive_count.to_string());
                row("sent", &iso(dead.sent_at));
                for (key, value) in &dead.attributes {
                    row("attribute", &format!("{key} = {value}"));
                }
                row("body", &dead.body);
            }
        }
        return Ok(0);
    }
    bail!(
        "no dead letter {message} ready in {}; `taskbeat dlq list` shows the ids (one someone else is looking at is hidden for a minute)",
        searched.join(", ")
    )
}

/// What became of a redriven message's record, and what happens next.
fn fate_text(fate: RecordFate) -> (String, &'static str) {
    match fate {
        RecordFate::Reopened => ("task reopened (PENDING)".into(), "it runs when the message arrives"),
        RecordFate::Unfinished { state } => (format!("task {state}"), "it runs when the message arrives"),
        RecordFate::Finished { state } => (
            format!("task already {state}"),
            "the message will be acknowledged without running (taskbeat retry runs it anew)",
        ),
        RecordFate::NoRecord => ("no record yet".into(), "the worker makes one and runs it"),
        RecordFate::NoTaskId => ("no task id in the body".into(), "it will be dead-lettered again"),
        RecordFate::NotLookedAt => ("arrived during the redrive".into(), "not looked at"),
    }
}

/// Moves one dead letter (`message`) or all of one queue or every queue back; a report per queue.
pub async fn redrive<'a>(
    setup: &'a Setup,
    queue: Option<&str>,
    message: Option<String>,
) -> Result<Vec<(&'a str, &'a QueuePair, RedriveReport)>> {
    let selection = message.clone().map_or(Selection::All, Selection::Message);
    let mut reports: Vec<(&str, &QueuePair, RedriveReport)> = Vec::new();
    for (queue, pair) in selected_queues(setup, queue)? {
        let store = setup.backend.store.as_ref();
        match dead_letters::redrive(pair.dead_letters.as_ref(), pair.queue.as_ref(), store, &selection).await {
            Ok(report) => {
                reports.push((queue, pair, report));
                if message.is_some() {
                    break;
                }
            }
            // Looking for one message in every DLQ: it is in another one.
            Err(RedriveError::NoSuchMessage { .. }) if message.is_some() => {}
            Err(e) => return Err(anyhow!(e).context(format!("redrive of {}'s dead letters", pair.dead_letters.name()))),
        }
    }
    if let (Some(message), true) = (&message, reports.is_empty()) {
        let searched: Vec<&str> = selected_queues(setup, queue)?.iter().map(|(_, p)| p.dead_letters.name()).collect();
        bail!(
            "no dead letter {message} ready in {}; `taskbeat dlq list` shows the ids (one someone else is looking at is hidden for a minute)",
            searched.join(", ")
        );
    }
    Ok(reports)
}

/// Redrive reports as `dlq redrive --output json` prints them.
pub fn redrive_json(reports: &[(&str, &QueuePair, RedriveReport)]) -> Value {
    Value::Array(
        reports
            .iter()
            .map(|(queue, pair, report)| {
                json!({
                    "queue": queue,
                    "name": pair.queue.name(),
                    "dlq": pair.dead_letters.name(),
                    "method": report.method,
                    "moved": report.moved,
                    "messages": report.messages,
                })
            })
            .collect(),
    )
}

async fn dlq_redrive(setup: &Setup, queue: Option<&str>, message: Option<String>, output: Output) -> Result<i32> {
    let reports = redrive(setup, queue, message.clone()).await?;
    match output {
        Output::Json => print_json(&redrive_json(&reports))?,
        Output::Table => {
            let empty: Vec<&str> =
                reports.iter().filter(|(_, _, r)| r.moved == 0).map(|(_, p, _)| p.dead_letters.name()).collect();
            if !empty.is_empty() {
                outln!("no dead letters in {}", empty.join(", "));
            }
            for (queue, pair, report) in reports.iter().filter(|(_, _, r)| r.moved > 0) {
                // A task the queue's module does not have comes straight back.
                let registry = setup
                    .manifest
                    .module_for_queue(queue)
                    .and_then(|(_, module)| modules::registry_for(&module.crate_name));
                let method = serde_json::to_value(report.method)?;
                outln!(
                    "moved {} dead letter{} from {} back to {queue} ({})",
                    report.moved,
                    if report.moved == 1 { "" } else { "s" },
                    pair.dead_letters.name(),
                    method.as_str().unwrap_or_default()
                );
                for m in &report.messages {
                    let new_id = match m.new_message_id.as_deref() {
                        Some(id) if id != m.message_id => format!(" -> {id}"),
                        _ => String::new(),
                    };
                    let (fate, next) = fate_text(m.fate);
                    let next = match (&m.task, &registry) {
                        (Some(task), Some(registry)) if registry.get(task).is_none() => format!(
                            "but module `{}` on {queue} has no task {task}: it will be dead-lettered again",
                            registry.module()
                        ),
                        _ => next.to_owned(),
                    };
                    let task = match (&m.task_id, &m.task) {
                        (Some(id), Some(task)) => format!("  {task} {id}"),
                        (Some(id), None) => format!("  {id}"),
                        _ => String::new(),
                    };
                    outln!("  {}{new_id}{task}: {fate}; {next}", m.message_id);
                }
            }
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// retry

/// Sends a FAILURE or REVOKED task again with its arguments: the new id and the old record.
pub async fn retry_task(setup: &Setup, id: Uuid) -> Result<(Uuid, TaskRecord)> {
    let record = setup.backend.store.get(id).await?.ok_or_else(|| no_task(setup, id))?;
    if !matches!(record.state, TaskState::Failure | TaskState::Revoked) {
        bail!(
            "task {} is {}; only a FAILURE or REVOKED task can be retried{}",
            id,
            record.state,
            if record.state.is_terminal() { "" } else { " (it has not finished; `taskbeat watch` follows it)" }
        );
    }
    if modules::linked().iter().all(|(_, r)| r.get(&record.task).is_none()) {
        bail!(
            "task {} is `{}`, which no linked module registers (`taskbeat inspect registered` lists them); a retry would be dead-lettered",
            id,
            record.task
        );
    }
    // A double click or two operators at once: one retry, not two.
    let marker = format!("retry:{id}");
    if !setup.backend.store.acquire_marker(&marker, RETRY_WINDOW).await? {
        bail!(
            "task {id} was retried less than {} s ago; `taskbeat list --task {}` shows the new task",
            RETRY_WINDOW.as_secs(),
            record.task
        );
    }
    let client = Client::new(setup.manifest.clone(), setup.backend.clone(), format!("taskbeat-cli@{}", hostname()));
    let options = SendOptions {
        queue: Some(record.queue.clone()),
        parent_id: Some(record.id),
        root_id: Some(record.root_id.unwrap_or(record.id)),
        ..Default::default()
    };
    let new_id = client.send(&record.task, record.args.clone(), record.kwargs.clone(), options).await?;
    Ok((new_id, record))
}

pub async fn retry(setup: Setup, args: RetryArgs, output: Output) -> Result<i32> {
    let (id, record) = retry_task(&setup, args.id).await?;
    match output {
        Output::Json => outln!("{}", json!({ "id": id, "retry_of": record.id, "task": record.task })),
        Output::Table => {
            eprintln!("retrying {} ({}, {}) as a new task:", record.id, record.task, record.state);
            outln!("{id}");
        }
    }
    if args.wait {
        return crate::watch(&setup, id, None, output).await;
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// purge

pub async fn purge(setup: Setup, args: PurgeArgs, output: Output) -> Result<i32> {
    let (queue, pair, named_dlq) = resolve_queue(&setup, &args.queue)?;
    let dlq = named_dlq || args.dlq;
    let target = if dlq { &pair.dead_letters } else { &pair.queue };
    let depth = target.depth().await?;
    let total = depth.visible + depth.in_flight + depth.delayed;
    let what =
        if dlq { format!("{queue}'s dead-letter queue {}", target.name()) } else { format!("queue {}", target.name()) };
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to purge {what} without a confirmation: stdin is not a terminal; pass --yes to purge anyway"
            );
        }
        eprint!(
            "Purge {what} in {}: about {total} message{} ({} waiting, {} in flight, {} delayed)? This cannot be undone. [y/N] ",
            setup.backend.location,
            if total == 1 { "" } else { "s" },
            depth.visible,
            depth.in_flight,
            depth.delayed
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer).context("cannot read the confirmation")?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            eprintln!("not purged");
            return Ok(1);
        }
    }
    let purged = target.purge().await?;
    match output {
        Output::Json => outln!("{}", json!({ "queue": queue, "name": target.name(), "dlq": dlq, "purged": purged })),
        Output::Table => {
            outln!("purged {what}: {purged} message{}", if purged == 1 { "" } else { "s" });
            if !dlq && purged > 0 {
                outln!(
                    "(their task records stay as they were: `taskbeat list --state PENDING` shows them, `taskbeat revoke ID` closes one)"
                );
            }
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// inspect registered

pub fn inspect(args: InspectArgs, manifest: Option<&Path>, output: Output) -> Result<i32> {
    let InspectWhat::Registered = args.what;
    let (manifest, origin, _) = find_manifest(manifest)?;
    let mut entries = Vec::new();
    for (crate_name, registry) in modules::linked() {
        let in_manifest = manifest.modules.iter().find(|(_, m)| m.crate_name == crate_name);
        let tasks: Vec<Value> = registry
            .names()
            .filter_map(|name| registry.get(name))
            .map(|spec| {
                let options = spec.options();
                json!({
                    "name": spec.name(),
                    "params": spec.params(),
                    "max_retries": options.max_retries,
                    "time_limit_secs": options.time_limit.map(|t| t.as_secs_f64()),
                    "autoretry_for": options.autoretry_for,
                })
            })
            .collect();
        entries.push(json!({
            "module": in_manifest.map_or(registry.module(), |(name, _)| name.as_str()),
            "crate": crate_name,
            "queue": in_manifest.map(|(_, m)| m.queue.clone()),
            "tasks": tasks,
        }));
    }
    match output {
        Output::Json => print_json(&Value::Array(entries))?,
        Output::Table => {
            for entry in &entries {
                let tasks = entry["tasks"].as_array().map(Vec::as_slice).unwrap_or_default();
                let consumed = match entry["queue"].as_str() {
                    Some(queue) => format!("queue {queue}"),
                    None => format!("not in {origin}: nothing consumes these here"),
                };
                outln!(
                    "-> {} ({}, {consumed}): {} task{}",
                    entry["module"].as_str().unwrap_or_default(),
                    entry["crate"].as_str().unwrap_or_default(),
                    tasks.len(),
                    if tasks.len() == 1 { "" } else { "s" }
                );
                for task in tasks {
                    let params: Vec<&str> =
                        task["params"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    let mut options = vec![format!("max_retries={}", task["max_retries"])];
                    if let Some(limit) = task["time_limit_secs"].as_f64() {
                        options.push(format!("time_limit={limit}s"));
                    }
                    let autoretry: Vec<&str> =
                        task["autoretry_for"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    if !autoretry.is_empty() {
                        options.push(format!("autoretry_for={}", autoretry.join(",")));
                    }
                    outln!(
                        "    * {}({})  [{}]",
                        task["name"].as_str().unwrap_or_default(),
                        params.join(", "),
                        options.join(" ")
                    );
                }
            }
        }
    }
    Ok(0)
}

// ---------------------------------------------------------------------------------------------
// completions

pub fn completions(args: CompletionsArgs) -> Result<i32> {
    let mut command = crate::Cli::command();
    // Written through `out!`, so a closed pipe ends quietly like every other command.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "taskbeat", &mut script);
    out!("{}", String::from_utf8_lossy(&script));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = Utc::now();
        let hour = parse_since("1h").unwrap_or_default();
        assert!((now - hour - chrono::Duration::hours(1)).num_seconds().abs() <= 1);
        let week = parse_since("2w").unwrap_or_default();
        assert!((now - week - chrono::Duration::weeks(2)).num_seconds().abs() <= 1);
        assert_eq!(parse_since("2026-12-03T09:00:00Z").ok().map(iso), Some("2026-12-03T09:00:00.000Z".to_owned()));
        for bad in ["", "h", "1y", "yesterday", "-1h"] {
            let err = parse_since(bad).err().unwrap_or_default();
            assert!(err.contains("30s, 15m, 1h"), "{bad}: {err}");
        }
        for huge in ["99999999d", "1000000000000000000s", "9223372036854775807w"] {
            let err = parse_since(huge).err().unwrap_or_default();
            assert!(err.contains("before any date"), "{huge}: {err}");
        }
    }

    #[test]
    fn tables_pad_columns_and_colour_only_when_asked() {
        let rows = vec![vec![Cell::plain("a"), Cell::state(TaskState::Success), Cell::number(5)]];
        let plain = table(&["NAME", "STATE", "N"], &rows, false);
        assert_eq!(plain, "NAME  STATE    N\na     SUCCESS  5\n");
        let coloured = table(&["NAME", "STATE", "N"], &rows, true);
        assert!(coloured.contains("\x1b[32mSUCCESS\x1b[0m"), "{coloured:?}");
    }
}
