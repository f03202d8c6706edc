//! `taskbeat schedules`: the listing of the repo's manifest, `run`, `enable`/`disable` on the
//! emulator, and the beat's line in `taskbeat local`'s banner.

use std::process::Command;

use chrono::{DateTime, Timelike, Utc};
use serde_json::Value;

use super::{BIN, interrupt, taskbeat, text};

#[test]
fn lists_the_repos_schedules_with_expressions_and_next_fire_times() {
    // An empty folder: the built-in manifest, which is the repo's taskbeat.toml.
    let dir = tempfile::tempdir().unwrap();
    let before = Utc::now();
    let listed = taskbeat(dir.path(), &["schedules", "--output", "json"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(rows.iter().all(|r| r.get("deployed").is_none()), "deployment is only looked up with --aws");
    let by_name = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name} listed"));
    let next = |name: &str| -> Vec<DateTime<Utc>> {
        by_name(name)["next"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().parse().unwrap()).collect()
    };

    assert_eq!(by_name("check_health")["expression"], "rate(5 minutes)");
    assert_eq!(by_name("check_queues")["expression"], "cron(0/10 * * * ? *)");
    assert_eq!(by_name("check_queues")["args"], serde_json::json!([100]));
    assert_eq!(by_name("cleanup_inactive_users")["expression"], "cron(0 3 * * ? *)");
    assert_eq!(by_name("refresh_collection")["expression"], "cron(7 * * * ? *)");
    assert_eq!(by_name("refresh_collection")["rule"], "taskbeat-refresh_collection");

    let queues = next("check_queues");
    assert_eq!(queues.len(), 3);
    assert!(queues[0] > before && queues[0] - before <= chrono::Duration::minutes(10), "{queues:?}");
    assert!(queues.iter().all(|t| t.minute() % 10 == 0 && t.second() == 0), "{queues:?}");
    assert!(queues.windows(2).all(|w| w[1] - w[0] == chrono::Duration::minutes(10)), "{queues:?}");
    assert!(next("cleanup_inactive_users").iter().all(|t| (t.hour(), t.minute()) == (3, 0)));
    assert!(next("refresh_collection").windows(2).all(|w| w[1] - w[0] == chrono::Duration::hours(1)));
    let health = next("check_health");
    assert!(health.windows(2).all(|w| w[1] - w[0] == chrono::Duration::minutes(5)), "{health:?}");

    let table = taskbeat(dir.path(), &["schedules"]);
    let table = text(&table.stdout);
    assert!(table.contains("check_queues  cron(0/10 * * * ? *)  (crontab(minute='*/10'), UTC)"), "{table}");
    assert!(table.contains("UTC   local "), "UTC and local times: {table}");
}

#[test]
fn run_sends_the_scheduled_task_now() {
    let dir = tempfile::tempdir().unwrap();
    let sent = taskbeat(dir.path(), &["schedules", "run", "cleanup_inactive_users"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let id = text(&sent.stdout).trim().to_owned();
    let status = taskbeat(dir.path(), &["status", &id, "--output", "json"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let record: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(record["task"], "app.schedules.user_task.cleanup_inactive_users");
    assert_eq!(record["args"], serde_json::json!([30]));
    assert_eq!(record["state"], "PENDING");

    let again = taskbeat(dir.path(), &["schedules", "run", "cleanup_inactive_users"]);
    assert_ne!(text(&again.stdout).trim(), id, "a new id each time");

    let unknown = taskbeat(dir.path(), &["schedules", "run", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("no schedule `nope`") && text(&unknown.stderr).contains("check_queues"));

    let local_only = taskbeat(dir.path(), &["schedules", "disable", "check_queues"]);
    assert_eq!(local_only.status.code(), Some(1));
    assert!(text(&local_only.stderr).contains("add --aws"), "{}", text(&local_only.stderr));
}

#[test]
fn bad_schedules_are_reported_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = "[project]\nname = \"x\"\n\n[modules.user]\ncrate = \"taskbeat-user\"\nqueue = \"default\"\n\n\
                    [schedules.nightly]\ntask = \"app.schedules.user_task.cleanup_inactive_users\"\nhour = 3\n\
                    day_of_week = 7\n";
    std::fs::write(dir.path().join("taskbeat.toml"), manifest).unwrap();
    let listed = taskbeat(dir.path(), &["schedules"]);
    assert_eq!(listed.status.code(), Some(1));
    let err = text(&listed.stderr);
    assert!(
        err.contains("line 11: schedule `nightly`: day_of_week = 7: 7 is outside 0-6 (Sunday is 0 in Celery)"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn enable_and_disable_switch_the_deployed_rule_on_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let project = taskbeat_e2e::emulator::unique_project("sched");
    let task = "task = \"app.schedules.user_task.cleanup_inactive_users\"";
    let manifest = format!(
        "{}\n[schedules.nightly]\n{task}\nminute = 0\nhour = 3\nargs = [30]\n\n\
         [schedules.undeployed]\n{task}\nevery = \"1h\"\n",
        taskbeat_e2e::emulator::user_manifest(&project)
    );
    std::fs::write(dir.path().join("taskbeat.toml"), &manifest).unwrap();
    let rule = format!("{project}-nightly");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let events =
        runtime.block_on(async { aws_sdk_eventbridge::Client::new(&taskbeat_e2e::emulator::sdk_config().await) });
    runtime
        .block_on(events.put_rule().name(&rule).schedule_expression("cron(0 3 * * ? *)").send())
        .expect("rule created on the emulator");
    let state = || {
        let out = runtime.block_on(events.describe_rule().name(&rule).send()).unwrap();
        out.state.map(|s| s.as_str().to_owned()).unwrap_or_default()
    };
    assert_eq!(state(), "ENABLED");

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
            .env_remove("TASKBEAT_MANIFEST")
            .output()
            .unwrap()
    };
    let disabled = aws(&["schedules", "disable", "nightly"]);
    assert!(disabled.status.success(), "{}", text(&disabled.stderr));
    assert_eq!(text(&disabled.stdout).trim(), format!("{rule}: DISABLED"));
    assert_eq!(state(), "DISABLED");

    let listed = aws(&["schedules", "--output", "json"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(rows[0]["name"], "nightly");
    assert_eq!(rows[0]["deployed"]["enabled"], false);
    assert_eq!(rows[1]["deployed"], Value::Null, "not deployed");

    let enabled = aws(&["schedules", "enable", "nightly", "--output", "json"]);
    assert!(enabled.status.success(), "{}", text(&enabled.stderr));
    let answer: Value = serde_json::from_slice(&enabled.stdout).unwrap();
    assert_eq!(answer["enabled"], true);
    assert_eq!(state(), "ENABLED");

    let missing = aws(&["schedules", "disable", "undeployed"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = text(&missing.stderr);
    assert!(err.contains(&format!("no EventBridge rule `{project}-undeployed`")) && err.contains("deploy"), "{err}");
}

/// Starts `taskbeat local ARGS` and returns its banner (up to the Ctrl-C line), then stops it.
fn local_banner(dir: &std::path::Path, args: &[&str]) -> String {
    let (mut child, banner) = super::spawn_local_banner(dir, &[], args, &[]);
    interrupt(&mut child);
    banner.join("\n")
}

#[test]
fn local_runs_the_beat_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let banner = local_banner(dir.path(), &["--grace", "1"]);
    assert!(
        banner.contains("beat:     check_health, check_queues, cleanup_inactive_users, refresh_collection"),
        "{banner}"
    );
    let banner = local_banner(dir.path(), &["--grace", "1", "--no-schedules"]);
    assert!(banner.contains("beat:     off (--no-schedules)"), "{banner}");
}
