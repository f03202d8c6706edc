//! The local beat: fires the manifest's schedules at their times, with the same expression
//! semantics as the deployed EventBridge rules (a cron on whole UTC minutes, a rate from the
//! start), each firing a task with a new id through the producer client.
//!
//! Time comes from a [`Clock`], so tests run through hours of schedules in milliseconds.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::Phase;
use crate::client::{Client, SendOptions};
use crate::manifest::Manifest;
use crate::schedule::{Schedule, ScheduleError, schedule_of};

/// Where the beat gets the time and how it waits.
#[async_trait]
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> DateTime<Utc>;

    /// Waits until `deadline`. `false` when this clock will never get there (a test clock at
    /// its end): the beat then stops.
    async fn sleep_until(&self, deadline: DateTime<Utc>) -> bool;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) -> bool {
        // In slices, re-reading the wall clock: a suspended laptop or a clock step must not
        // push a fire time back by the length of the nap.
        loop {
            let left = deadline - Utc::now();
            if left <= chrono::Duration::zero() {
                return true;
            }
            let slice = left.to_std().unwrap_or_default().min(std::time::Duration::from_secs(30));
            tokio::time::sleep(slice).await;
        }
    }
}

/// A clock that jumps straight to each deadline, up to an end; for tests.
#[derive(Debug)]
pub struct VirtualClock {
    now: Mutex<DateTime<Utc>>,
    end: DateTime<Utc>,
}

impl VirtualClock {
    /// Starts at `start`; deadlines after `end` are never reached.
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        VirtualClock { now: Mutex::new(start), end }
    }
}

#[async_trait]
impl Clock for VirtualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn sleep_until(&self, deadline: DateTime<Utc>) -> bool {
        tokio::task::yield_now().await;
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        if deadline > self.end {
            *now = self.end;
            return false;
        }
        *now = (*now).max(deadline);
        true
    }
}

/// One schedule the beat fires.
#[derive(Debug, Clone)]
pub struct BeatEntry {
    /// The schedule's name in the manifest.
    pub name: String,
    /// When.
    pub schedule: Schedule,
    /// The task to send.
    pub task: String,
    /// Its positional arguments.
    pub args: Vec<Value>,
    /// Its keyword arguments.
    pub kwargs: Map<String, Value>,
    /// A queue instead of the task's route.
    pub queue: Option<String>,
}

/// A firing: which schedule, when it was due, and the new task's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The schedule's name.
    pub schedule: String,
    /// The task sent.
    pub task: String,
    /// Its new id.
    pub id: Uuid,
    /// The fire time it was sent for.
    pub due: DateTime<Utc>,
}

/// The scheduler of `taskbeat local`.
#[derive(Debug)]
pub struct Beat {
    entries: Vec<BeatEntry>,
    client: Client,
    clock: Arc<dyn Clock>,
    fired: Option<mpsc::UnboundedSender<Fired>>,
}

impl Beat {
    /// A beat over the manifest's enabled schedules (disabled ones are deployed disabled and
    /// do not fire here either).
    pub fn from_manifest(manifest: &Manifest, client: Client, clock: Arc<dyn Clock>) -> Result<Beat, ScheduleError> {
        let mut entries = Vec::new();
        for (name, spec) in manifest.schedules.iter().filter(|(_, s)| s.enabled) {
            let schedule = schedule_of(spec)
                .map_err(|e| ScheduleError { problem: format!("schedule `{name}`: {}", e.problem), ..e })?;
            entries.push(BeatEntry {
                name: name.clone(),
                schedule,
                task: spec.task.clone(),
                args: spec.args.clone(),
                kwargs: spec.kwargs.clone(),
                queue: spec.queue.clone(),
            });
        }
        Ok(Beat { entries, client, clock, fired: None })
    }

    /// A beat over given entries.
    pub fn new(entries: Vec<BeatEntry>, client: Client, clock: Arc<dyn Clock>) -> Beat {
        Beat { entries, client, clock, fired: None }
    }

    /// Also reports each firing on `tx`.
    pub fn reporting_to(mut self, tx: mpsc::UnboundedSender<Fired>) -> Beat {
        self.fired = Some(tx);
        self
    }

    /// The schedules it fires.
    pub fn entries(&self) -> &[BeatEntry] {
        &self.entries
    }

    /// Fires schedules until the phase leaves `Running` (or the clock ends).
    pub async fn run(self, mut phase: watch::Receiver<Phase>) {
        let start = self.clock.now();
        let mut due: Vec<Option<DateTime<Utc>>> = self.entries.iter().map(|e| e.schedule.next_after(start)).collect();
        loop {
            if *phase.borrow() != Phase::Running {
                return;
            }
            let Some(next) = due.iter().flatten().min().copied() else {
                // Nothing will ever fire again; wait to be stopped.
                let _ = phase.changed().await;
                return;
            };
            let reached = tokio::select! {
                changed = phase.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
                reached = self.clock.sleep_until(next) => reached,
            };
            if !reached {
                return;
            }
            let now = self.clock.now();
            for (entry, slot) in self.entries.iter().zip(due.iter_mut()) {
                let Some(at) = *slot else { continue };
                if at > now {
                    continue;
                }
                self.fire(entry, at).await;
                *slot = entry.schedule.following(at, now);
            }
        }
    }

    async fn fire(&self, entry: &BeatEntry, due: DateTime<Utc>) {
        let options = SendOptions { queue: entry.queue.clone(), ..SendOptions::default() };
        match self.client.send(&entry.task, entry.args.clone(), entry.kwargs.clone(), options).await {
            Ok(id) => {
                // Names and ids only: arguments stay out of logs.
                tracing::info!(schedule = %entry.name, task = %entry.task, task_id = %id, due = %due, "beat sent");
                if let Some(tx) = &self.fired {
                    let _ = tx.send(Fired { schedule: entry.name.clone(), task: entry.task.clone(), id, due });
                }
            }
            Err(e) => {
                tracing::warn!(
                    schedule = %entry.name, task = %entry.task, due = %due, error = %e,
                    "beat could not send; trying again at the next fire time"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::backend::Backend;
    use crate::sqlite::Db;
    use crate::state::TaskState;

    const REPO_MANIFEST: &str = include_str!("../../../taskbeat.toml");

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn minutes(times: &[DateTime<Utc>]) -> Vec<String> {
        times.iter().map(|t| t.format("%H:%M").to_string()).collect()
    }

    #[tokio::test]
    async fn fires_the_repos_schedules_on_time_with_fresh_ids() {
        let manifest = Arc::new(Manifest::parse(REPO_MANIFEST, "taskbeat.toml").unwrap());
        let backend = Backend::embedded_on(&manifest, Db::open(Path::new(":memory:")).unwrap());
        let client = Client::new(manifest.clone(), backend.clone(), "beat-test");
        // From 02:58:30 to 04:09:00 UTC on a Sunday: the daily 03:00 run, :07 twice, every
        // ten minutes on the clock, every five minutes from the start.
        let clock = Arc::new(VirtualClock::new(at("2026-03-01T02:58:30Z"), at("2026-03-01T04:09:00Z")));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let beat = Beat::from_manifest(&manifest, client, clock.clone()).unwrap().reporting_to(tx);
        let (_phase_tx, phase) = watch::channel(Phase::Running);
        tokio::time::timeout(Duration::from_secs(60), beat.run(phase))
            .await
            .expect("the beat stops at the clock's end");

        let mut fired: BTreeMap<String, Vec<Fired>> = BTreeMap::new();
        while let Ok(f) = rx.try_recv() {
            fired.entry(f.schedule.clone()).or_default().push(f);
        }
        let due = |name: &str| minutes(&fired[name].iter().map(|f| f.due).collect::<Vec<_>>());
        assert_eq!(due("cleanup_inactive_users"), ["03:00"]);
        assert_eq!(due("refresh_collection"), ["03:07", "04:07"]);
        assert_eq!(due("check_queues"), ["03:00", "03:10", "03:20", "03:30", "03:40", "03:50", "04:00"]);
        let health: Vec<String> = fired["check_health"].iter().map(|f| f.due.format("%H:%M:%S").to_string()).collect();
        assert_eq!(
            health,
            [
                "03:03:30", "03:08:30", "03:13:30", "03:18:30", "03:23:30", "03:28:30", "03:33:30", "03:38:30",
                "03:43:30", "03:48:30", "03:53:30", "03:58:30", "04:03:30", "04:08:30"
            ]
        );
        assert_eq!(clock.now(), at("2026-03-01T04:09:00Z"));

        // Every firing is its own task: a new id, a PENDING record with the schedule's task and
        // arguments, a message on the task's queue.
        let all: Vec<&Fired> = fired.values().flatten().collect();
        let ids: BTreeSet<Uuid> = all.iter().map(|f| f.id).collect();
        assert_eq!(ids.len(), all.len(), "fresh ids");
        for f in &all {
            let record = backend.store.get(f.id).await.unwrap().unwrap();
            assert_eq!(record.state, TaskState::Pending);
            assert_eq!(record.task, f.task);
            assert_eq!(record.args, manifest.schedules[&f.schedule].args);
            assert_eq!(record.queue, manifest.route(&f.task));
        }
        let depth = |queue: &str| {
            let queue = backend.queue(queue).unwrap().queue.clone();
            async move { queue.depth().await.unwrap().visible }
        };
        assert_eq!(depth("alerts").await, 14 + 7);
        assert_eq!(depth("default").await, 1);
        assert_eq!(depth("nft").await, 2);
    }

    #[tokio::test]
    async fn stops_when_told_and_skips_missed_runs() {
        let manifest = Arc::new(Manifest::parse(REPO_MANIFEST, "taskbeat.toml").unwrap());
        let backend = Backend::embedded_on(&manifest, Db::open(Path::new(":memory:")).unwrap());
        let client = Client::new(manifest.clone(), backend, "beat-test");
        let schedule = Schedule::parse("cron(0/10 * * * ? *)").unwrap();
        // A cron handled late fires once, then resumes on the clock.
        assert_eq!(
            schedule.following(at("2026-03-01T03:00:00Z"), at("2026-03-01T03:47:10Z")),
            Some(at("2026-03-01T03:50:00Z"))
        );
        let entry = BeatEntry {
            name: "tick".into(),
            schedule,
            task: "app.schedules.alert.check_queues".into(),
            args: vec![],
            kwargs: Map::new(),
            queue: None,
        };
        let beat = Beat::new(vec![entry], client, Arc::new(SystemClock));
        let (phase_tx, phase) = watch::channel(Phase::Running);
        let running = tokio::spawn(beat.run(phase));
        phase_tx.send(Phase::Draining).unwrap();
        tokio::time::timeout(Duration::from_secs(5), running).await.expect("stops on Draining").unwrap();
    }
}
