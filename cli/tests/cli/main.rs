//! The `taskbeat` binary as a person uses it: `taskbeat local` in one process, `send`,
//! `watch` and `status` in others, a stop with Ctrl-C and a restart.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use taskbeat_e2e::fake_app;

mod dashboard;
mod infra;
mod modules;
mod ops;
mod schedules;
mod stops;

const BIN: &str = env!("CARGO_BIN_EXE_taskbeat");

fn taskbeat(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .env_remove("TASKBEAT_MANIFEST")
        .env_remove("TASKBEAT_DATA_DIR")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Starts `taskbeat [extra] local` in `dir` and waits for its banner. The caller stops it
/// (`interrupt`).
#[allow(clippy::zombie_processes)]
fn start_local(dir: &Path, api_base: &str) -> Child {
    start_local_with(dir, api_base, &[])
}

#[allow(clippy::zombie_processes)]
fn start_local_with(dir: &Path, api_base: &str, extra: &[&str]) -> Child {
    spawn_local(dir, extra, &[], &[("APP_API_BASE", api_base.to_owned())])
}

/// Starts `taskbeat local [local_args]` with settings in its environment.
#[allow(clippy::zombie_processes)]
fn start_local_env(dir: &Path, env: &[(&str, String)], local_args: &[&str]) -> Child {
    spawn_local(dir, &[], local_args, env)
}

#[allow(clippy::zombie_processes)]
pub(crate) fn spawn_local(dir: &Path, global: &[&str], local_args: &[&str], env: &[(&str, String)]) -> Child {
    let (child, banner) = spawn_local_banner(dir, global, local_args, env);
    let banner = banner.join("\n");
    assert!(banner.contains("data:"), "says where the data lives:\n{banner}");
    assert!(banner.contains("taskbeat send app.schedules.user_task.process_users"), "{banner}");
    child
}

/// Starts `taskbeat [global] local [local_args]` and reads its banner, up to the Ctrl-C line.
#[allow(clippy::zombie_processes)]
pub(crate) fn spawn_local_banner(
    dir: &Path,
    global: &[&str],
    local_args: &[&str],
    env: &[(&str, String)],
) -> (Child, Vec<String>) {
    let mut command = Command::new(BIN);
    command
        .current_dir(dir)
        .args(global)
        .arg("local")
        .args(local_args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("TASKBEAT_MANIFEST")
        .env_remove("TASKBEAT_DATA_DIR");
    read_banner(command)
}

/// Spawns a `taskbeat local` command and reads its banner, up to the Ctrl-C line. Its stderr
/// keeps being read, so a chatty worker never blocks on a full pipe.
#[allow(clippy::zombie_processes)]
pub(crate) fn read_banner(mut command: Command) -> (Child, Vec<String>) {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut banner = Vec::new();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            let done = line.contains("Ctrl-C stops");
            banner.push(line);
            if done {
                return (child, banner);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("taskbeat local did not start:\n{}", banner.join("\n"));
}

fn interrupt(child: &mut Child) {
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("taskbeat local did not stop on Ctrl-C");
}

#[test]
fn local_send_watch_status_and_restart() {
    let app = fake_app::spawn_detached(fake_app::Options { delay: Duration::from_millis(150), ..Default::default() });
    // An empty folder: no taskbeat.toml, so the built-in default manifest is used.
    let dir = tempfile::tempdir().unwrap();
    let mut local = start_local(dir.path(), &app.base());

    let sent = taskbeat(
        dir.path(),
        &["send", "app.schedules.user_task.process_users", "--args", r#"[["u1","u2","u3"],"recompute"]"#],
    );
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let id = text(&sent.stdout).trim().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "prints the id: {id}");

    let watched = taskbeat(dir.path(), &["watch", &id]);
    assert!(watched.status.success(), "exit 0 on SUCCESS: {}", text(&watched.stderr));
    let progress = text(&watched.stderr);
    assert!(progress.contains("PROGRESS") && progress.contains("processing users: 1/3"), "{progress}");
    let summary = text(&watched.stdout);
    assert!(summary.contains("SUCCESS") && summary.contains(r#""processed":3"#), "{summary}");

    interrupt(&mut local);
    assert!(dir.path().join(".taskbeat/taskbeat.db").exists(), "data beside the manifest (here: the working folder)");
    let mut local = start_local(dir.path(), &app.base());
    let status = taskbeat(dir.path(), &["status", &id, "--output", "json"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let record: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(record["state"], "SUCCESS");
    assert_eq!(record["result"]["processed"], 3);

    // A failing task: watch exits non-zero and shows the error.
    let sent = taskbeat(
        dir.path(),
        &["send", "app.schedules.user_task.process_users", "--args", r#"[["u1"],"explode"]"#, "--wait"],
    );
    assert_eq!(sent.status.code(), Some(1));
    assert!(
        text(&sent.stdout).contains("FAILURE") && text(&sent.stdout).contains("unknown action"),
        "{}",
        text(&sent.stdout)
    );
    interrupt(&mut local);
}

#[test]
fn mistakes_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = taskbeat(dir.path(), &["send", "app.schedules.user_task.nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    let err = text(&unknown.stderr);
    assert!(err.contains("unknown task `app.schedules.user_task.nope`") && err.contains("process_users"), "{err}");

    let bad_args = taskbeat(dir.path(), &["send", "app.schedules.user_task.process_users", "--args", "{not json"]);
    assert!(text(&bad_args.stderr).contains("--args must be a JSON array"), "{}", text(&bad_args.stderr));
    // A call the task cannot take is refused before it is sent.
    let short = taskbeat(dir.path(), &["send", "app.schedules.user_task.process_users", "--args", r#"[["u1"]]"#]);
    assert_eq!(short.status.code(), Some(1));
    let err = text(&short.stderr);
    assert!(err.contains("missing field `action`") && err.contains("user_ids, action"), "{err}");
    let extra =
        taskbeat(dir.path(), &["send", "app.schedules.user_task.cleanup_inactive_users", "--kwargs", r#"{"dayz":3}"#]);
    assert!(text(&extra.stderr).contains("dayz"), "{}", text(&extra.stderr));

    let missing = taskbeat(dir.path(), &["status", &uuid::Uuid::new_v4().to_string()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("no task"), "{}", text(&missing.stderr));

    std::fs::write(
        dir.path().join("taskbeat.toml"),
        "[project]\nname = \"x\"\n[modules.user]\ncrate = \"taskbeat-user\"\n",
    )
    .unwrap();
    let bad_manifest = taskbeat(dir.path(), &["status", &uuid::Uuid::new_v4().to_string()]);
    let err = text(&bad_manifest.stderr);
    assert!(err.contains("taskbeat.toml") && err.contains("queue") && err.contains("line"), "{err}");

    // A schedule whose task lives in another module than its queue's: refused before it runs.
    std::fs::write(
        dir.path().join("taskbeat.toml"),
        "[project]\nname = \"x\"\n[modules.user]\ncrate = \"taskbeat-user\"\nqueue = \"default\"\n\
         [schedules.check_queues]\ntask = \"app.schedules.alert.check_queues\"\nminute = \"*/10\"\nargs = [100]\n",
    )
    .unwrap();
    let misrouted = taskbeat(dir.path(), &["local", "--no-dashboard"]);
    assert_eq!(misrouted.status.code(), Some(1));
    let err = text(&misrouted.stderr);
    assert!(err.contains("schedule `check_queues`") && err.contains("module `user` does not register it"), "{err}");

    // A closed pipe ends `completions` quietly, as every other command.
    let mut completions = Command::new(BIN).args(["completions", "bash"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    BufReader::new(completions.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(!first.is_empty());
    assert_eq!(completions.wait().unwrap().code(), Some(0), "no panic on the broken pipe");
}

/// `taskbeat --aws local` where the queues do not exist: one clear error, not a log flood.
#[test]
fn aws_local_without_its_resources_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let project = taskbeat_e2e::emulator::unique_project("missing");
    std::fs::write(dir.path().join("taskbeat.toml"), taskbeat_e2e::emulator::user_manifest(&project)).unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--aws", "local", "--no-dashboard"])
        .env("AWS_ENDPOINT_URL", taskbeat_e2e::emulator::endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{project}-default")) && err.contains("--create-resources"), "{err}");
}

#[test]
fn local_and_send_on_aws_through_the_emulator() {
    let app = fake_app::spawn_detached(fake_app::Options::default());
    let dir = tempfile::tempdir().unwrap();
    let project = taskbeat_e2e::emulator::unique_project("cli");
    std::fs::write(dir.path().join("taskbeat.toml"), taskbeat_e2e::emulator::user_manifest(&project)).unwrap();
    let endpoint = taskbeat_e2e::emulator::endpoint();
    let aws = |args: &[&str]| {
        Command::new(BIN)
            .current_dir(dir.path())
            .arg("--aws")
            .args(args)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap()
    };
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--aws", "local", "--create-resources", "--grace", "5"])
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("APP_API_BASE", app.base())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the table to exist (created by --create-resources) before sending.
    let started = Instant::now();
    let id = loop {
        let sent =
            aws(&["send", "app.schedules.user_task.process_users", "--args", r#"[["u1","missing-2"],"recompute"]"#]);
        if sent.status.success() {
            break text(&sent.stdout).trim().to_owned();
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("send never succeeded: {}\nlocal said: {}", text(&sent.stderr), text(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let watched = aws(&["watch", &id, "--timeout", "60", "--output", "json"]);
    interrupt(&mut child);
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
    assert!(watched.status.success(), "{}\nlocal said:\n{stderr}", text(&watched.stderr));
    let record: serde_json::Value = serde_json::from_slice(&watched.stdout).unwrap();
    assert_eq!(record["state"], "SUCCESS");
    assert_eq!(record["result"]["failed"][0]["id"], "missing-2");
    assert!(stderr.contains("DynamoDB table"), "{stderr}");
}

/// SIGKILL `taskbeat local` at random moments while 500 tasks run, restart it, until all are
/// finished: every task ends SUCCESS, none lost or stuck, and bodies run again only where a
/// kill interrupted them.
#[test]
fn killing_local_at_random_loses_nothing() {
    let app = fake_app::spawn_detached(fake_app::Options { delay: Duration::from_millis(20), ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    // A short timeout so killed batches come back quickly (visibility = 6 x timeout = 12 s).
    let manifest_text = "[project]\nname = \"kill\"\n\n[modules.user]\ncrate = \"taskbeat-user\"\nqueue = \"default\"\n\
                         timeout = 2\nmax_concurrency = 4\n\n[queues.default]\nmax_receive_count = 100\n";
    std::fs::write(dir.path().join("taskbeat.toml"), manifest_text).unwrap();
    let manifest = taskbeat::manifest::Manifest::parse(manifest_text, "test").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backend = taskbeat::backend::Backend::embedded(&manifest, &dir.path().join(".taskbeat")).unwrap();
    let client = taskbeat::Client::new(std::sync::Arc::new(manifest), backend.clone(), "kill-test");
    let total = 500;
    let ids: Vec<uuid::Uuid> = runtime.block_on(async {
        let mut ids = Vec::new();
        for i in 0..total {
            let args = vec![serde_json::json!([format!("k{i}")]), serde_json::json!("recompute")];
            ids.push(
                client
                    .send("app.schedules.user_task.process_users", args, Default::default(), Default::default())
                    .await
                    .unwrap(),
            );
        }
        ids
    });
    let states = || -> std::collections::BTreeMap<String, usize> {
        runtime.block_on(async {
            let mut counts = std::collections::BTreeMap::new();
            for id in &ids {
                let state = backend.store.get(*id).await.unwrap().unwrap().state.to_string();
                *counts.entry(state).or_insert(0) += 1;
            }
            counts
        })
    };
    let mut kills = 0;
    let mut seed: u64 = 0x5eed;
    let started = Instant::now();
    loop {
        let mut local = start_local(dir.path(), &app.base());
        let finished = |counts: &std::collections::BTreeMap<String, usize>| counts.get("SUCCESS") == Some(&total);
        if kills < 4 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            std::thread::sleep(Duration::from_millis(150 + (seed >> 33) % 600));
            local.kill().unwrap();
            local.wait().unwrap();
            kills += 1;
            continue;
        }
        // Last run: let it finish.
        while !finished(&states()) {
            assert!(started.elapsed() < Duration::from_secs(120), "not finished: {:?}", states());
            std::thread::sleep(Duration::from_millis(500));
        }
        interrupt(&mut local);
        break;
    }
    let counts = states();
    assert_eq!(counts.get("SUCCESS"), Some(&total), "{counts:?}");
    let gets = app.calls.lock().unwrap().gets.clone();
    let runs: usize = (0..total).map(|i| gets.get(&format!("k{i}")).copied().unwrap_or(0)).sum();
    assert!((0..total).all(|i| gets.get(&format!("k{i}")).copied().unwrap_or(0) >= 1), "every body ran");
    let reruns = runs - total;
    let rerun_tasks = (0..total).filter(|i| gets.get(&format!("k{i}")).copied().unwrap_or(0) > 1).count();
    // At most the batches in flight at each kill: 4 pollers x 10 records.
    assert!(rerun_tasks <= kills * 40, "{rerun_tasks} tasks ran again after {kills} kills");
    println!(
        "kill test: {total} tasks, {kills} SIGKILLs, 0 lost, 0 stuck, {total} SUCCESS, {reruns} re-runs of {rerun_tasks} tasks, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
