//! Stopping and starting `taskbeat local`: interrupted tasks are released, one runtime per data
//! folder, schedules checked against the linked tasks, large arguments from a file.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use taskbeat_e2e::fake_app;

use super::{BIN, interrupt, spawn_local, start_local, taskbeat, text};

fn json_status(dir: &std::path::Path, id: &str) -> serde_json::Value {
    let out = taskbeat(dir, &["status", id, "--output", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[test]
fn ctrl_c_releases_running_tasks_and_they_run_again_at_once() {
    let app = fake_app::spawn_detached(fake_app::Options { delay: Duration::from_millis(250), ..Default::default() });
    let dir = tempfile::tempdir().unwrap();
    let mut local = spawn_local(dir.path(), &[], &["--grace", "1", "--no-schedules"], &[("APP_API_BASE", app.base())]);
    let users: Vec<String> = (0..30).map(|i| format!("u{i}")).collect();
    let args = serde_json::json!([users, "recompute"]).to_string();
    let sent = taskbeat(dir.path(), &["send", "app.schedules.user_task.process_users", "--args", &args]);
    let id = text(&sent.stdout).trim().to_owned();
    let started = Instant::now();
    while json_status(dir.path(), &id)["state"] != "PROGRESS" {
        assert!(started.elapsed() < Duration::from_secs(20), "never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    interrupt(&mut local);
    let record = json_status(dir.path(), &id);
    assert_eq!(record["state"], "RETRY", "{record}");
    assert_eq!(record["error"]["type"], "Interrupted");
    assert!(record.get("lease_until").is_none(), "the claim is released");

    let mut local = spawn_local(dir.path(), &[], &["--no-schedules"], &[("APP_API_BASE", app.base())]);
    let restarted = Instant::now();
    while json_status(dir.path(), &id)["state"] != "SUCCESS" {
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "not run again promptly: {}",
            json_status(dir.path(), &id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    interrupt(&mut local);
}

#[test]
fn one_local_per_data_folder() {
    let app = fake_app::spawn_detached(fake_app::Options::default());
    let dir = tempfile::tempdir().unwrap();
    let mut first = start_local(dir.path(), &app.base());
    let second = Command::new(BIN)
        .current_dir(dir.path())
        .args(["local", "--no-schedules"])
        .env("APP_API_BASE", app.base())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = text(&second.stderr);
    assert!(err.contains("already running") && err.contains("pid"), "{err}");
    interrupt(&mut first);
}

#[test]
fn schedules_must_name_linked_tasks_with_fitting_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[project]\nname = \"s\"\ndefault_queue = \"alerts\"\n[modules.alert]\ncrate = \"taskbeat-alert\"\nqueue = \"alerts\"\n";
    std::fs::write(
        dir.path().join("taskbeat.toml"),
        format!("{base}[schedules.bad]\ntask = \"app.schedules.alert.nosuch\"\nminute = \"*\"\nqueue = \"alerts\"\n"),
    )
    .unwrap();
    let out = Command::new(BIN).current_dir(dir.path()).arg("local").output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("app.schedules.alert.nosuch"), "{err}");

    std::fs::write(
        dir.path().join("taskbeat.toml"),
        format!("{base}[schedules.bad]\ntask = \"app.schedules.alert.check_queues\"\nminute = \"*\"\nqueue = \"alerts\"\nargs = [1, 2, 3]\n"),
    )
    .unwrap();
    let out = Command::new(BIN).current_dir(dir.path()).arg("local").output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("positional arguments"), "{err}");
}

#[test]
fn large_arguments_come_from_a_file_or_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let big = serde_json::json!([["u1"], "x".repeat(300 * 1024)]).to_string();
    let file = dir.path().join("args.json");
    std::fs::write(&file, &big).unwrap();
    let arg = format!("@{}", file.display());
    let out = taskbeat(dir.path(), &["send", "app.schedules.user_task.process_users", "--args", &arg]);
    let err = text(&out.stderr);
    assert!(err.contains("over queue `default`'s limit of 262144 bytes"), "refused by size, not by the shell: {err}");

    let small = serde_json::json!([["u1"], "recompute"]).to_string();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["send", "app.schedules.user_task.process_users", "--args", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), small.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(uuid::Uuid::parse_str(text(&out.stdout).trim()).is_ok());
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // As `taskbeat schedules | head -1`: the reader goes away before the output is written.
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["schedules"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{err}");
}
