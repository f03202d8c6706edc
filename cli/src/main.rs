//! `taskbeat`: the operator CLI and `taskbeat local`.

/// `println!`/`print!` that end the process quietly when stdout is closed early
/// (`taskbeat list | head`) instead of panicking on the broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(e);
        }
    }};
}
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(e);
        }
    }};
}

mod dashboard;
mod infra;
mod modules;
mod ops;
mod output;
mod schedules;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};
use taskbeat::backend::{Backend, load_sdk_config};
use taskbeat::handler::{BatchHandler, HandlerOptions};
use taskbeat::local::{LocalWorker, Phase};
use taskbeat::manifest::Manifest;
use taskbeat::{Client, SendOptions, TaskState};
use tokio::sync::watch;
use uuid::Uuid;

/// The manifest compiled into this binary, used when no `taskbeat.toml` is found.
const DEFAULT_MANIFEST: &str = include_str!("../../taskbeat.toml");

#[derive(Debug, Parser)]
#[command(name = "taskbeat", version, about = "Celery-style tasks on AWS serverless: run, send and watch tasks")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// The manifest (default: taskbeat.toml here or in a parent folder, else the built-in one).
    #[arg(long, global = true, env = "TASKBEAT_MANIFEST")]
    manifest: Option<PathBuf>,
    /// Where the embedded store lives (default: .taskbeat beside the manifest).
    #[arg(long, global = true, env = "TASKBEAT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Use DynamoDB and SQS (standard AWS environment: AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL).
    #[arg(long, global = true)]
    aws: bool,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every module's worker on the embedded store (or on AWS with --aws) until Ctrl-C.
    Local(LocalArgs),
    /// Send a task; prints its id.
    Send(SendArgs),
    /// Show a task's record and its history (every state change with its time).
    Status {
        /// Task id.
        #[arg(value_parser = parse_task_id)]
        id: Uuid,
    },
    /// Follow a task until it finishes; exit code 0 on SUCCESS, 1 otherwise.
    Watch(WatchArgs),
    /// Deployment: `infra render` writes infra/template.yaml (AWS SAM) from the manifest.
    Infra(infra::InfraArgs),
    /// Beat schedules: expressions and next fire times; `run`, `enable`, `disable` one.
    Schedules(schedules::SchedulesArgs),
    /// Revoke a task: a pending one never starts, a running one is told (ctx.is_revoked()).
    Revoke {
        /// Task id.
        #[arg(value_parser = parse_task_id)]
        id: Uuid,
    },
    /// List tasks, newest first: state, progress, age, duration.
    List(ops::ListArgs),
    /// Per module: messages waiting, in flight, delayed, and in the dead-letter queue.
    Queues,
    /// Dead letters: list them, show one, redrive one or all back to their queue.
    Dlq(ops::DlqArgs),
    /// Send a FAILURE or REVOKED task again with its arguments (a new id whose parent is the old one).
    Retry(ops::RetryArgs),
    /// Empty a queue (or its DLQ) after a confirmation (--yes for scripts).
    Purge(ops::PurgeArgs),
    /// `inspect registered`: the tasks of every linked module, as `celery inspect registered`.
    Inspect(ops::InspectArgs),
    /// Serve the web dashboard (tasks, queues and dead letters, schedules, charts) until Ctrl-C.
    Dashboard(dashboard::DashboardArgs),
    /// Print a shell completion script: `taskbeat completions bash > ~/.local/share/bash-completion/completions/taskbeat`.
    Completions(ops::CompletionsArgs),
}

#[derive(Debug, Args)]
struct LocalArgs {
    /// Seconds in-flight tasks get to finish after Ctrl-C before they go back to their queue.
    #[arg(long, default_value_t = 30)]
    grace: u64,
    /// With --aws: create the table and queues first where missing (for the emulator).
    #[arg(long)]
    create_resources: bool,
    /// Do not fire the manifest's schedules (with --aws they never fire here: the deployed
    /// EventBridge rules do).
    #[arg(long)]
    no_schedules: bool,
    #[command(flatten)]
    dashboard: dashboard::LocalDashboardArgs,
}

#[derive(Debug, Args)]
struct SendArgs {
    /// Task name, e.g. app.schedules.user_task.process_users.
    task: String,
    /// Positional arguments: a JSON array, inline, as @FILE, or - (standard input).
    #[arg(long, default_value = "[]")]
    args: String,
    /// Keyword arguments: a JSON object, inline, as @FILE, or - (standard input).
    #[arg(long, default_value = "{}")]
    kwargs: String,
    /// Queue to use instead of the manifest's route.
    #[arg(long)]
    queue: Option<String>,
    /// Seconds before it may run (negative: now); longer than SQS's 900 s works too.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "eta")]
    countdown: Option<i64>,
    /// Do not run before this time (RFC 3339, e.g. 2026-12-24T08:00:00Z).
    #[arg(long, value_parser = parse_time)]
    eta: Option<chrono::DateTime<chrono::Utc>>,
    /// Do not run after this: a time (RFC 3339) or seconds from now; then it is REVOKED.
    #[arg(long, value_parser = parse_expires)]
    expires: Option<chrono::DateTime<chrono::Utc>>,
    /// Send without checking the task and its arguments against the linked modules (an unknown
    /// task is dead-lettered; arguments it cannot take make it FAILURE).
    #[arg(long)]
    unchecked: bool,
    /// Then watch it until it finishes.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Task id.
    #[arg(value_parser = parse_task_id)]
    id: Uuid,
    /// Give up after this many seconds (exit code 3).
    #[arg(long)]
    timeout: Option<u64>,
}

/// Everything a command needs: the manifest, where it came from, and the backend.
struct Setup {
    manifest: Arc<Manifest>,
    manifest_origin: String,
    backend: Backend,
}

/// Stdout is gone: a closed pipe ends the command quietly; anything else is an error.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to standard output: {e}");
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,taskbeat=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<i32> {
    // Rendering reads the manifest only: no store or queue is opened.
    let command = match cli.command {
        Command::Infra(args) => return infra::run(args, cli.global.manifest.as_deref()),
        Command::Completions(args) => return ops::completions(args),
        Command::Inspect(args) => return ops::inspect(args, cli.global.manifest.as_deref(), cli.global.output),
        command => command,
    };
    let setup = setup(&cli.global).await?;
    match command {
        Command::Infra(_) | Command::Completions(_) | Command::Inspect(_) => unreachable!("handled before the setup"),
        Command::Local(args) => local(setup, args, cli.global.aws).await,
        Command::Send(args) => send(setup, args, cli.global.output).await,
        Command::Status { id } => ops::status(setup, id, cli.global.output).await,
        Command::Revoke { id } => revoke(setup, id, cli.global.output).await,
        Command::Watch(args) => watch(&setup, args.id, args.timeout.map(Duration::from_secs), cli.global.output).await,
        Command::Schedules(args) => schedules::run(setup, args, cli.global.output, cli.global.aws).await,
        Command::List(args) => ops::list(setup, args, cli.global.output).await,
        Command::Queues => ops::queues(setup, cli.global.output).await,
        Command::Dlq(args) => ops::dlq(setup, args, cli.global.output, cli.global.aws).await,
        Command::Retry(args) => ops::retry(setup, args, cli.global.output).await,
        Command::Purge(args) => ops::purge(setup, args, cli.global.output).await,
        Command::Dashboard(args) => dashboard::run(setup, args, cli.global.aws).await,
    }
}

fn find_manifest(explicit: Option<&Path>) -> Result<(Manifest, String, Option<PathBuf>)> {
    if let Some(path) = explicit {
        let manifest = Manifest::load(path)?;
        return Ok((manifest, path.display().to_string(), Some(path.to_path_buf())));
    }
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    for dir in cwd.ancestors() {
        let candidate = dir.join("taskbeat.toml");
        if candidate.is_file() {
            let manifest = Manifest::load(&candidate)?;
            return Ok((manifest, candidate.display().to_string(), Some(candidate)));
        }
    }
    let manifest = Manifest::parse(DEFAULT_MANIFEST, "(built-in)")?;
    Ok((manifest, "(built-in default; no taskbeat.toml found here or above)".into(), None))
}

async fn setup(global: &Global) -> Result<Setup> {
    let (manifest, manifest_origin, path) = find_manifest(global.manifest.as_deref())?;
    let backend = if global.aws {
        let sdk = load_sdk_config().await;
        if sdk.region().is_none() {
            bail!("--aws needs a region: set AWS_REGION (and AWS_ENDPOINT_URL for an emulator)");
        }
        Backend::aws(&manifest, &sdk)
    } else {
        let data_dir = match (&global.data_dir, &path) {
            (Some(dir), _) => dir.clone(),
            (None, Some(manifest_path)) => manifest_path.parent().unwrap_or(Path::new(".")).join(".taskbeat"),
            (None, None) => PathBuf::from(".taskbeat"),
        };
        Backend::embedded(&manifest, &data_dir)?
    };
    Ok(Setup { manifest: Arc::new(manifest), manifest_origin, backend })
}

async fn local(setup: Setup, args: LocalArgs, aws: bool) -> Result<i32> {
    if args.create_resources && !aws {
        bail!("--create-resources creates AWS resources: use it with --aws (taskbeat --aws local --create-resources)");
    }
    if args.create_resources {
        let sdk = load_sdk_config().await;
        taskbeat::provision::create_missing(&setup.manifest, &aws_sdk_dynamodb_client(&sdk), &aws_sdk_sqs_client(&sdk))
            .await?;
    }
    if aws && !args.create_resources {
        // Fail once, clearly, rather than have every poller log the same error each second.
        for (queue, pair) in &setup.backend.queues {
            pair.queue.depth().await.with_context(|| {
                format!(
                    "queue `{queue}` ({}) cannot be read: deploy the infrastructure, or on an emulator run \
                     `taskbeat --aws local --create-resources`",
                    pair.queue.name()
                )
            })?;
        }
    }
    // One runtime per data folder: a second one would run every schedule twice.
    let _lock = if aws { None } else { Some(lock_data_folder(&setup.backend.location)?) };
    check_schedules(&setup.manifest)?;
    let mut workers = Vec::new();
    for (name, module) in &setup.manifest.modules {
        let registry = modules::registry_for(&module.crate_name).ok_or_else(|| {
            let known: Vec<&str> = modules::linked().iter().map(|(n, _)| *n).collect();
            anyhow!(
                "module `{name}` names crate `{}`, which this taskbeat binary does not include (it has: {})",
                module.crate_name,
                known.join(", ")
            )
        })?;
        let pair = setup.backend.queue(&module.queue).ok_or_else(|| anyhow!("no queue `{}`", module.queue))?;
        let options = HandlerOptions { default_time_limit: module.timeout(), ..HandlerOptions::default() };
        let handler = BatchHandler::new(
            Arc::new(registry),
            setup.backend.store.clone(),
            pair.dead_letters.clone(),
            &module.queue,
            options,
        )
        .with_client(Client::new(
            setup.manifest.clone(),
            setup.backend.clone(),
            format!("taskbeat-local@{}", hostname()),
        ));
        // The ARN Lambda would put in events: the queue's SQS name on AWS.
        let arn = if aws {
            LocalWorker::local_arn(&setup.manifest.sqs_queue_name(&module.queue))
        } else {
            LocalWorker::local_arn(&module.queue)
        };
        workers.push(LocalWorker::for_module(name, module, pair.queue.clone(), handler, arn));
    }
    let summary: Vec<String> =
        setup.manifest.modules.iter().map(|(name, m)| format!("{name} (queue {})", m.queue)).collect();
    eprintln!("taskbeat local: running {}", summary.join(", "));
    eprintln!("  data:     {}", setup.backend.location);
    eprintln!("  manifest: {}", setup.manifest_origin);
    eprintln!(
        "  try:      taskbeat {}send app.schedules.user_task.process_users --args '[[\"u1\",\"u2\",\"u3\"],\"recompute\"]' --wait",
        if aws { "--aws " } else { "" }
    );
    // Settings a module must have: its tasks fail (MissingSetting) until they are set.
    for (name, module) in &setup.manifest.modules {
        let missing: Vec<&str> = module
            .settings
            .iter()
            .chain(&module.secrets)
            .map(String::as_str)
            .filter(|var| std::env::var_os(var).is_none_or(|v| v.is_empty()))
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "  warning:  module {name} needs {} (unset): its tasks fail until set (README, Quick start: the stand-ins)",
                missing.join(", ")
            );
        }
    }
    let beat = schedules::local_beat(&setup, args.no_schedules, aws)?;
    let setup = Arc::new(setup);
    let dashboard = dashboard::for_local(setup.clone(), args.dashboard, aws).await?;
    if let Some(dashboard) = &dashboard {
        eprintln!("  dashboard: {}", dashboard.banner());
    }
    let dashboard = dashboard.map(|d| tokio::spawn(d.serve()));
    eprintln!("  Ctrl-C stops: in-flight tasks get {} s to finish, then go back to their queue.", args.grace);

    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let beat = beat.map(|beat| tokio::spawn(beat.run(phase_rx.clone())));
    let runtime = tokio::spawn(taskbeat::local::run(workers, phase_rx));
    tokio::signal::ctrl_c().await.context("cannot listen for Ctrl-C")?;
    eprintln!(
        "taskbeat local: stopping; waiting up to {} s for in-flight tasks (Ctrl-C again to stop now)",
        args.grace
    );
    let _ = phase_tx.send(Phase::Draining);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(args.grace)) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = async { while !runtime.is_finished() { tokio::time::sleep(Duration::from_millis(50)).await; } } => {}
    }
    let _ = phase_tx.send(Phase::Abandon);
    let _ = runtime.await;
    if let Some(beat) = beat {
        let _ = beat.await;
    }
    if let Some(dashboard) = dashboard {
        dashboard.abort();
    }
    eprintln!("taskbeat local: stopped");
    Ok(0)
}

/// Takes the data folder's lock for this process's lifetime, or says who holds it.
fn lock_data_folder(db: &str) -> Result<std::fs::File> {
    let path = Path::new(db).with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if file.try_lock().is_err() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "another `taskbeat local` ({}) is already running on {db}; stop it, or give this one its own --data-dir",
            if holder.trim().is_empty() { "pid unknown".to_owned() } else { format!("pid {}", holder.trim()) }
        );
    }
    let _ = std::fs::write(&path, std::process::id().to_string());
    Ok(file)
}

/// Every schedule's task must be one a linked module has, with arguments its parameters take:
/// otherwise it would be dead-lettered at each firing.
fn check_schedules(manifest: &Manifest) -> Result<()> {
    let linked = modules::linked();
    for (name, schedule) in &manifest.schedules {
        let spec = linked.iter().find_map(|(_, r)| r.get(&schedule.task)).ok_or_else(|| {
            anyhow!(
                "schedule `{name}` sends `{}`, which no module of this binary registers; \
                 see `taskbeat inspect registered` or fix the task name in the manifest",
                schedule.task
            )
        })?;
        spec.check(schedule.args.clone(), schedule.kwargs.clone())
            .map_err(|e| anyhow!("schedule `{name}`: {}", e.info().message))?;
        // The module on the schedule's queue must be the one with the task.
        let queue = schedule.queue.as_deref().unwrap_or_else(|| manifest.route(&schedule.task));
        let on_queue = manifest.module_for_queue(queue);
        let consumer_has_it = on_queue
            .and_then(|(_, module)| modules::registry_for(&module.crate_name))
            .is_some_and(|registry| registry.get(&schedule.task).is_some());
        if !consumer_has_it {
            bail!(
                "schedule `{name}` sends `{}` to queue `{queue}`, whose module{} does not register it \
                 (its messages would be dead-lettered); route the task to its module's queue \
                 (a [[routes]] entry, or `queue = ...` in the schedule)",
                schedule.task,
                on_queue.map(|(m, _)| format!(" `{m}`")).unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn aws_sdk_dynamodb_client(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(sdk)
}

fn aws_sdk_sqs_client(sdk: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(sdk)
}

/// Parses a JSON flag given inline, as `@FILE`, or as `-` (standard input): large arguments do
/// not fit on a command line.
fn parse_json<T: serde::de::DeserializeOwned>(flag: &str, text: &str, expected: &str) -> Result<T> {
    let (json, from) = if text == "-" {
        let mut input = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut input).context("cannot read standard input")?;
        (input, "standard input".to_owned())
    } else if let Some(path) = text.strip_prefix('@') {
        let json = std::fs::read_to_string(path).with_context(|| format!("{flag} {text}: cannot read {path}"))?;
        (json, path.to_owned())
    } else {
        (text.to_owned(), String::new())
    };
    serde_json::from_str(&json).map_err(|e| {
        let got = if from.is_empty() { format!("got {json}") } else { format!("read from {from}") };
        anyhow!("{flag} must be {expected}, inline, @FILE or - for standard input: {e} ({got})")
    })
}

async fn send(setup: Setup, args: SendArgs, output: Output) -> Result<i32> {
    let positional: Vec<Value> = parse_json("--args", &args.args, "a JSON array, e.g. '[[\"u1\"],\"recompute\"]'")?;
    let kwargs: Map<String, Value> = parse_json("--kwargs", &args.kwargs, "a JSON object, e.g. '{\"days\": 30}'")?;
    // A call the task cannot take fails now, not as a FAILURE record after the send.
    let spec = modules::linked().iter().find_map(|(_, r)| r.get(&args.task).cloned());
    if let (Some(spec), false) = (&spec, args.unchecked) {
        spec.check(positional.clone(), kwargs.clone()).map_err(|e| {
            anyhow!(
                "{}\n(`taskbeat inspect registered` shows its parameters: {}; --unchecked sends it anyway)",
                e.info().message,
                spec.params().join(", ")
            )
        })?;
    }
    if !args.unchecked && spec.is_none() {
        let mut known: Vec<String> =
            modules::linked().iter().flat_map(|(_, r)| r.names().map(str::to_owned).collect::<Vec<_>>()).collect();
        known.sort();
        bail!(
            "unknown task `{}`; registered tasks:\n  {}\n(--unchecked sends it anyway)",
            args.task,
            known.join("\n  ")
        );
    }
    if setup.manifest_origin.starts_with("(built-in") && !setup.backend.location.starts_with("DynamoDB") {
        eprintln!(
            "note: no taskbeat.toml here or above: sending to the built-in manifest's store {}; \
             a `taskbeat local` elsewhere does not read it (run this in its folder, or pass --manifest/--data-dir)",
            setup.backend.location
        );
    }
    let client = Client::new(setup.manifest.clone(), setup.backend.clone(), format!("taskbeat-cli@{}", hostname()));
    let options = SendOptions {
        queue: args.queue,
        countdown: args.countdown.map(chrono::Duration::seconds),
        eta: args.eta,
        expires: args.expires,
        ..Default::default()
    };
    let id = client.send(&args.task, positional, kwargs, options).await?;
    match output {
        Output::Json => outln!("{}", serde_json::json!({ "id": id })),
        Output::Table => outln!("{id}"),
    }
    if args.wait {
        return watch(&setup, id, None, output).await;
    }
    Ok(0)
}

/// A task id: taskbeat's ids are UUIDs.
pub(crate) fn parse_task_id(text: &str) -> Result<Uuid, String> {
    text.trim().parse().map_err(|_| {
        format!("`{text}` is not a task id: ids are UUIDs, as `taskbeat send` and `taskbeat list` print them")
    })
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e}: expected an RFC 3339 time such as 2026-12-24T08:00:00Z"))
}

fn parse_expires(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() => {
            Ok(chrono::Utc::now() + chrono::Duration::milliseconds((seconds * 1000.0) as i64))
        }
        _ => parse_time(text).map_err(|e| format!("{e}, or a number of seconds from now")),
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into())
}

/// Revokes a task; the state it was in.
async fn revoke_task(setup: &Setup, id: Uuid, reason: &str) -> Result<TaskState> {
    setup.backend.store.revoke(id, reason).await.map_err(|e| match e {
        taskbeat::store::StoreError::NotFound(_) => {
            anyhow!("no task {id} in {}; was it sent to this backend (--aws, --data-dir)?", setup.backend.location)
        }
        taskbeat::store::StoreError::Terminal { state, .. } => {
            anyhow!("task {id} is already {state}; nothing to revoke")
        }
        other => anyhow!(other),
    })
}

async fn revoke(setup: Setup, id: Uuid, output: Output) -> Result<i32> {
    let was = revoke_task(&setup, id, "revoked by an operator (taskbeat revoke)").await?;
    match output {
        Output::Json => outln!("{}", serde_json::json!({ "id": id, "state": "REVOKED", "previous_state": was })),
        Output::Table => outln!("revoked {id} (was {was})"),
    }
    Ok(0)
}

async fn watch(setup: &Setup, id: Uuid, timeout: Option<Duration>, output: Output) -> Result<i32> {
    let started = tokio::time::Instant::now();
    let interactive = std::io::stderr().is_terminal() && output == Output::Table;
    let bar = indicatif::ProgressBar::new(100);
    if interactive {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix:9} [{bar:30}] {pos:>3}% {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last_line = String::new();
    loop {
        let record = setup.backend.store.get(id).await?;
        if let Some(record) = &record {
            bar.set_prefix(record.state.to_string());
            bar.set_position(u64::from(record.progress));
            bar.set_message(record.status.clone().unwrap_or_default());
            let line = format!("{} {:>3}% {}", record.state, record.progress, record.status.as_deref().unwrap_or(""));
            if !interactive && output == Output::Table && line != last_line {
                eprintln!("{}", line.trim_end());
                last_line = line;
            }
            if record.state.is_terminal() {
                bar.finish_and_clear();
                match output {
                    Output::Json => outln!("{}", serde_json::to_string_pretty(record)?),
                    Output::Table => out!("{}", output::record_table(record)),
                }
                return Ok(if record.state == TaskState::Success { 0 } else { 1 });
            }
        } else if started.elapsed() > Duration::from_secs(10) {
            bar.finish_and_clear();
            bail!(
                "no task {id} in {} after 10 s; was it sent to this backend (--aws, --data-dir)?",
                setup.backend.location
            );
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            bar.finish_and_clear();
            eprintln!(
                "still {} after {:?}; giving up watching (the task goes on)",
                record.map_or("unknown".into(), |r| r.state.to_string()),
                timeout.unwrap_or_default()
            );
            return Ok(3);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
