//! Throughput and latency of `taskbeat local` on the embedded SQLite store.
//!
//! Runs the local runtime in-process, wired as `taskbeat local` wires it, and measures:
//! 1. throughput: `--tasks` sends from `--senders` concurrent producers, timed from the first
//!    send until every task's record reads SUCCESS through the state store;
//! 2. latency on an idle runtime: one task at a time, from `send` to a readable SUCCESS;
//! 3. CPU used while idle (nothing sent), as a percentage of one core.
//!
//! The task has the shape of the Celery baseline: one progress update, a small JSON result.
//! Nothing is asserted: this prints figures, it does not pass or fail.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use serde_json::{Map, Value, json};
use taskbeat::backend::Backend;
use taskbeat::handler::{BatchHandler, HandlerOptions};
use taskbeat::local::{LocalWorker, Phase};
use taskbeat::manifest::Manifest;
use taskbeat::store::StateStore;
use taskbeat::{Client, Registry, SendOptions, TaskContext, TaskError, TaskState};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

/// Celery 5.7 + Redis 7, prefork with 2 processes, results stored, same task shape.
const CELERY_BASELINE_TASKS_PER_S: f64 = 325.0;
/// The throughput target of `taskbeat local` on a 2-core machine.
const TARGET_TASKS_PER_S: f64 = 3_000.0;
/// The idle latency target (median send-to-readable-SUCCESS).
const TARGET_P50_MS: f64 = 50.0;
/// Linux's USER_HZ: the unit of utime/stime in /proc (100 on every mainstream build).
const CLOCK_TICKS_PER_S: f64 = 100.0;
/// The task every phase sends.
const TASK: &str = "bench.work";
/// Name the SQLite writer thread is given in shared/src/sqlite.rs (15 characters, as /proc keeps).
const SQLITE_THREAD: &str = "taskbeat-sqlite";
/// Largest number of records the completion check reads at once (they share one commit).
const MAX_CHECK_WINDOW: usize = 512;

#[derive(Debug, Parser)]
#[command(about = "Throughput and latency of `taskbeat local` on the embedded SQLite store")]
struct Args {
    /// Tasks sent in the throughput phase.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Concurrent producers in the throughput phase.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// The module's max_concurrency (local pollers, each running batches of 10).
    #[arg(long, default_value_t = 4)]
    max_concurrency: u16,
    /// Tasks sent one at a time in the latency phase.
    #[arg(long, default_value_t = 200)]
    latency_samples: usize,
    /// How long to measure CPU use with nothing sent.
    #[arg(long, default_value_t = 3)]
    idle_seconds: u64,
    /// Folder to create the temporary data folder in (the system temp folder by default).
    /// The file system matters: the figures only mean "durable" on a real disk, not tmpfs.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Log as the CLI does, with this filter (the CLI's default is `warn,taskbeat=info`, which
    /// writes three lines per task); logs go to stderr. Off by default.
    #[arg(long)]
    log: Option<String>,
    /// Print one JSON object with every figure on stdout (the report goes to stderr).
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.tasks == 0 || args.senders == 0 || args.max_concurrency == 0 {
        bail!("--tasks, --senders and --max-concurrency must be at least 1");
    }
    if let Some(filter) = &args.log {
        // The CLI's logger (cli/src/main.rs), so its cost can be included when wanted.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter).context("invalid --log filter")?)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_target(false)
            .try_init()
            .map_err(|e| anyhow!("cannot install the logger: {e}"))?;
    }

    let data = match &args.dir {
        Some(parent) => tempfile::Builder::new().prefix("taskbeat-bench-").tempdir_in(parent),
        None => tempfile::Builder::new().prefix("taskbeat-bench-").tempdir(),
    }
    .context("cannot create the temporary data folder")?;
    let manifest = Arc::new(bench_manifest(args.max_concurrency)?);
    let backend = Backend::embedded(&manifest, data.path()).context("cannot open the embedded database")?;
    let client = Client::new(manifest.clone(), backend.clone(), "taskbeat-bench");
    let store = backend.store.clone();

    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let runtime = tokio::spawn(taskbeat::local::run(local_workers(&manifest, &backend)?, phase_rx));

    let throughput = throughput_phase(&client, store.as_ref(), args.tasks, args.senders).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let latency = latency_phase(&client, store.as_ref(), args.latency_samples).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = idle_phase(Duration::from_secs(args.idle_seconds)).await?;

    let _ = phase_tx.send(Phase::Draining);
    if tokio::time::timeout(Duration::from_secs(5), runtime).await.is_err() {
        eprintln!("warning: the local runtime did not stop within 5 s");
    }

    let report = Report {
        cores: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        max_concurrency: args.max_concurrency,
        wal_file_present: data.path().join(format!("{}-wal", taskbeat::backend::DB_FILE)).exists(),
        data_dir: data.path().to_path_buf(),
        logging: args.log.clone(),
        throughput,
        latency,
        idle,
    };
    if args.json {
        eprint!("{}", report.text());
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

fn bench_manifest(max_concurrency: u16) -> Result<Manifest> {
    let text = format!(
        r#"
[project]
name = "bench"

[modules.bench]
crate = "bench"
queue = "default"
batch_size = 10
timeout = 60
max_concurrency = {max_concurrency}
"#
    );
    Manifest::parse(&text, "(benchmark manifest)").context("benchmark manifest")
}

/// The Celery baseline's task: one progress update, a small JSON result.
fn bench_registry() -> Registry {
    Registry::new("bench").task(TASK, &["n"], |ctx: TaskContext, args: Value| async move {
        ctx.progress(50, "working").await;
        Ok::<_, TaskError>(json!({ "n": args.get("n").cloned().unwrap_or(Value::Null) }))
    })
}

/// The workers, built as `taskbeat local` builds them (cli/src/main.rs `local()`).
fn local_workers(manifest: &Manifest, backend: &Backend) -> Result<Vec<LocalWorker>> {
    let mut workers = Vec::new();
    for (name, module) in &manifest.modules {
        let pair = backend.queue(&module.queue).ok_or_else(|| anyhow!("no queue `{}`", module.queue))?;
        let options = HandlerOptions { default_time_limit: module.timeout(), ..HandlerOptions::default() };
        let handler = BatchHandler::new(
            Arc::new(bench_registry()),
            backend.store.clone(),
            pair.dead_letters.clone(),
            &module.queue,
            options,
        );
        workers.push(LocalWorker::for_module(
            name,
            module,
            pair.queue.clone(),
            handler,
            LocalWorker::local_arn(&module.queue),
        ));
    }
    Ok(workers)
}

#[derive(Debug)]
struct Throughput {
    tasks: usize,
    senders: usize,
    /// First send to last send acknowledged.
    send_seconds: f64,
    /// First send to every record read as SUCCESS.
    total_seconds: f64,
    /// Reads the completion check made (they load the same database thread).
    check_reads: usize,
    cpu: CpuUse,
}

impl Throughput {
    fn tasks_per_s(&self) -> f64 {
        self.tasks as f64 / self.total_seconds
    }
}

async fn throughput_phase(client: &Client, store: &dyn StateStore, tasks: usize, senders: usize) -> Result<Throughput> {
    let cpu_before = CpuSnapshot::take()?;
    let started = Instant::now();
    let mut producers = JoinSet::new();
    for first in 0..senders.min(tasks) {
        let client = client.clone();
        producers.spawn(async move {
            let mut sent = Vec::new();
            for n in (first..tasks).step_by(senders) {
                let id = client.send(TASK, vec![json!(n)], Map::new(), SendOptions::default()).await?;
                sent.push((n, id));
            }
            Ok::<_, anyhow::Error>(sent)
        });
    }
    // In send order, so the completion check walks roughly the order the queue delivers.
    let mut ids = vec![Uuid::nil(); tasks];
    while let Some(joined) = producers.join_next().await {
        for (n, id) in joined.context("a sender panicked")?.context("send failed")? {
            ids[n] = id;
        }
    }
    let send_seconds = started.elapsed().as_secs_f64();
    let check_reads = wait_all_success(store, &ids).await?;
    let total_seconds = started.elapsed().as_secs_f64();
    let cpu = CpuSnapshot::take()?.since(&cpu_before);
    check_record(store, ids[tasks - 1], tasks - 1).await?;
    Ok(Throughput { tasks, senders, send_seconds, total_seconds, check_reads, cpu })
}

/// Reads every record until it is SUCCESS, oldest first. The window grows while it finds
/// finished tasks (their reads share one group commit) and shrinks to the oldest unfinished
/// one while the workers lag, so the check adds about one read per task.
async fn wait_all_success(store: &dyn StateStore, ids: &[Uuid]) -> Result<usize> {
    let mut pending: VecDeque<Uuid> = ids.iter().copied().collect();
    let mut window = 1;
    let mut reads = 0;
    while !pending.is_empty() {
        let batch: Vec<Uuid> = pending.iter().take(window).copied().collect();
        reads += batch.len();
        let done = futures::future::try_join_all(batch.iter().map(|&id| is_success(store, id))).await?;
        let finished = done.iter().filter(|d| **d).count();
        let mut flags = done.iter();
        pending.retain(|_| !flags.next().copied().unwrap_or(false));
        if finished == 0 {
            window = 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            window = (finished * 2).clamp(1, MAX_CHECK_WINDOW);
        }
    }
    Ok(reads)
}

/// Makes sure the runtime really ran the task (its result and its progress report are in
/// the record), so the figures are not those of a shortcut.
async fn check_record(store: &dyn StateStore, id: Uuid, n: usize) -> Result<()> {
    let record = store.get(id).await?.ok_or_else(|| anyhow!("task {id} has no record"))?;
    if record.result != Some(json!({ "n": n })) || record.status.as_deref() != Some("working") {
        bail!("task {id} has an unexpected record: {record:?}");
    }
    Ok(())
}

async fn is_success(store: &dyn StateStore, id: Uuid) -> Result<bool> {
    match store.get(id).await?.map(|r| (r.state, r.error)) {
        Some((TaskState::Success, _)) => Ok(true),
        Some((state, error)) if state.is_terminal() => bail!("task {id} ended {state}: {error:?}"),
        _ => Ok(false),
    }
}

#[derive(Debug)]
struct Latency {
    samples: usize,
    /// Send to readable SUCCESS, sorted, in ms.
    end_to_end_ms: Vec<f64>,
    /// The `send` call alone (two committed writes), sorted, in ms.
    send_ms: Vec<f64>,
}

/// Lets the previous task's delete settle so each sample starts on an idle runtime.
const LATENCY_GAP: Duration = Duration::from_millis(10);

async fn latency_phase(client: &Client, store: &dyn StateStore, samples: usize) -> Result<Latency> {
    let mut end_to_end_ms = Vec::with_capacity(samples);
    let mut send_ms = Vec::with_capacity(samples);
    for n in 0..samples {
        let started = Instant::now();
        let id = client.send(TASK, vec![json!(n)], Map::new(), SendOptions::default()).await?;
        send_ms.push(ms(started.elapsed()));
        while !is_success(store, id).await? {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        end_to_end_ms.push(ms(started.elapsed()));
        tokio::time::sleep(LATENCY_GAP).await;
    }
    end_to_end_ms.sort_by(f64::total_cmp);
    send_ms.sort_by(f64::total_cmp);
    Ok(Latency { samples, end_to_end_ms, send_ms })
}

async fn idle_phase(length: Duration) -> Result<CpuUse> {
    let before = CpuSnapshot::take()?;
    tokio::time::sleep(length).await;
    Ok(CpuSnapshot::take()?.since(&before))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU time of the process and of its threads by name, in clock ticks.
#[derive(Debug)]
struct CpuSnapshot {
    at: Instant,
    process: u64,
    threads: BTreeMap<String, u64>,
}

impl CpuSnapshot {
    fn take() -> Result<Self> {
        let at = Instant::now();
        let (_, process) = read_stat(Path::new("/proc/self/stat"))?;
        let mut threads = BTreeMap::new();
        for entry in std::fs::read_dir("/proc/self/task").context("cannot list /proc/self/task")? {
            // A thread may end between the listing and the read.
            if let Ok((name, ticks)) = read_stat(&entry?.path().join("stat")) {
                *threads.entry(name).or_default() += ticks;
            }
        }
        Ok(CpuSnapshot { at, process, threads })
    }

    fn since(&self, before: &CpuSnapshot) -> CpuUse {
        let wall = self.at.duration_since(before.at).as_secs_f64();
        let percent = |ticks: u64| ticks as f64 / CLOCK_TICKS_PER_S / wall * 100.0;
        let threads = self
            .threads
            .iter()
            .map(|(name, &ticks)| {
                (name.clone(), percent(ticks.saturating_sub(*before.threads.get(name).unwrap_or(&0))))
            })
            .filter(|(_, p)| *p > 0.0)
            .collect();
        CpuUse { seconds: wall, percent_of_core: percent(self.process.saturating_sub(before.process)), threads }
    }
}

/// A /proc stat file's command name and utime + stime.
fn read_stat(path: &Path) -> Result<(String, u64)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    // The name is in parentheses and may hold spaces or parentheses: split at the last ')'.
    let open = text.find('(').ok_or_else(|| anyhow!("unexpected {}: {text}", path.display()))?;
    let close = text.rfind(')').ok_or_else(|| anyhow!("unexpected {}: {text}", path.display()))?;
    let name = text.get(open + 1..close).unwrap_or_default().to_owned();
    // After the name come fields 3 (state) onwards; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = text.get(close + 1..).unwrap_or_default().split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields.get(n - 3).and_then(|f| f.parse().ok()).ok_or_else(|| anyhow!("no field {n} in {}", path.display()))
    };
    Ok((name, field(14)? + field(15)?))
}

/// CPU used over a period: the process as a percentage of one core, and each thread name's share.
#[derive(Debug)]
struct CpuUse {
    seconds: f64,
    percent_of_core: f64,
    threads: BTreeMap<String, f64>,
}

impl CpuUse {
    fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "percent_of_one_core": self.percent_of_core,
            "threads_percent_of_one_core": self.threads,
        })
    }

    fn threads_text(&self) -> String {
        self.threads.iter().map(|(name, p)| format!("{name} {p:.0}%")).collect::<Vec<_>>().join(", ")
    }
}

#[derive(Debug)]
struct Report {
    cores: usize,
    max_concurrency: u16,
    wal_file_present: bool,
    data_dir: PathBuf,
    logging: Option<String>,
    throughput: Throughput,
    latency: Latency,
    idle: CpuUse,
}

impl Report {
    fn text(&self) -> String {
        let t = &self.throughput;
        let l = &self.latency;
        let e2e = |p| percentile(&l.end_to_end_ms, p);
        let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
        let mut out = String::new();
        out.push_str("taskbeat local throughput benchmark\n");
        out.push_str(&format!(
            "  machine:     {} cores; data in {}\n  sqlite:      journal_mode=WAL ({}), synchronous=NORMAL, group commit \
             (one writer thread, one transaction per batch of waiting requests)\n  runtime:     1 module, batch_size=10, \
             max_concurrency={}, logging {}\n",
            self.cores,
            self.data_dir.display(),
            if self.wal_file_present { "WAL file present" } else { "WAL file NOT found" },
            self.max_concurrency,
            self.logging.as_deref().unwrap_or("off"),
        ));
        out.push_str(&format!(
            "throughput:    {:.0} tasks/s ({} tasks, {} senders, {:.2} s; sends done at {:.2} s; {} check reads) \
             -> {} the {:.0} tasks/s target\n",
            t.tasks_per_s(),
            t.tasks,
            t.senders,
            t.total_seconds,
            t.send_seconds,
            t.check_reads,
            verdict(t.tasks_per_s() >= TARGET_TASKS_PER_S),
            TARGET_TASKS_PER_S,
        ));
        out.push_str(&format!(
            "  baseline:    Celery 5.7 + Redis 7 (prefork, 2 processes, results stored): ~{:.0} tasks/s -> {:.1}x\n",
            CELERY_BASELINE_TASKS_PER_S,
            t.tasks_per_s() / CELERY_BASELINE_TASKS_PER_S
        ));
        out.push_str(&format!(
            "  cpu:         {:.0}% of one core; the SQLite writer thread alone {:.0}% ({})\n",
            t.cpu.percent_of_core,
            t.cpu.threads.get(SQLITE_THREAD).copied().unwrap_or(0.0),
            t.cpu.threads_text()
        ));
        out.push_str(&format!(
            "latency:       send -> readable SUCCESS on an idle runtime, {} samples, polled every 1 ms: p50 {:.1} ms, \
             p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms -> {} the p50 < {:.0} ms target\n",
            l.samples,
            e2e(50.0),
            e2e(90.0),
            e2e(99.0),
            l.end_to_end_ms.last().copied().unwrap_or(f64::NAN),
            verdict(e2e(50.0) < TARGET_P50_MS),
            TARGET_P50_MS,
        ));
        out.push_str(&format!(
            "  send call:   p50 {:.2} ms, p99 {:.2} ms\n",
            percentile(&l.send_ms, 50.0),
            percentile(&l.send_ms, 99.0)
        ));
        out.push_str(&format!(
            "idle cpu:      {:.2}% of one core over {:.1} s ({})\n",
            self.idle.percent_of_core,
            self.idle.seconds,
            self.idle.threads_text()
        ));
        out
    }

    fn json(&self) -> Value {
        let t = &self.throughput;
        let l = &self.latency;
        json!({
            "machine": { "cores": self.cores },
            "sqlite": {
                "journal_mode": "WAL",
                "wal_file_present": self.wal_file_present,
                "synchronous": "NORMAL",
                "group_commit": true,
                "data_dir": self.data_dir.display().to_string(),
            },
            "runtime": { "batch_size": 10, "max_concurrency": self.max_concurrency, "logging": self.logging },
            "throughput": {
                "tasks": t.tasks,
                "senders": t.senders,
                "seconds": t.total_seconds,
                "send_seconds": t.send_seconds,
                "check_reads": t.check_reads,
                "tasks_per_s": t.tasks_per_s(),
                "target_tasks_per_s": TARGET_TASKS_PER_S,
                "celery_baseline_tasks_per_s": CELERY_BASELINE_TASKS_PER_S,
                "speedup_over_celery": t.tasks_per_s() / CELERY_BASELINE_TASKS_PER_S,
                "cpu": t.cpu.json(),
            },
            "latency_ms": {
                "samples": l.samples,
                "p50": percentile(&l.end_to_end_ms, 50.0),
                "p90": percentile(&l.end_to_end_ms, 90.0),
                "p99": percentile(&l.end_to_end_ms, 99.0),
                "max": l.end_to_end_ms.last(),
                "target_p50": TARGET_P50_MS,
                "send_p50": percentile(&l.send_ms, 50.0),
                "send_p99": percentile(&l.send_ms, 99.0),
            },
            "idle_cpu": self.idle.json(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
    }

    #[test]
    fn reads_own_cpu_time() {
        let (name, _) = read_stat(Path::new("/proc/self/stat")).unwrap();
        assert!(!name.is_empty());
    }
}
