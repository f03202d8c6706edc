//! The operator commands (`list`, `status`, `queues`, `dlq`, `retry`, `purge`, `inspect`,
//! `completions`) on a run with a few failures, on the embedded backend and on the emulator
//! (`--aws`), JSON parsed back. The story: a deploy where the `default` queue is consumed by
//! the wrong crate dead-letters the user tasks; the operator looks at the dead letters, fixes
//! the deploy, redrives them (counting before and after), and they succeed.

use std::collections::BTreeSet;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use taskbeat::backend::Backend;
use taskbeat::manifest::Manifest;
use taskbeat::queue::OutgoingMessage;
use taskbeat_e2e::{emulator, fake_app};

use super::{BIN, interrupt, text};

pub(crate) const PROCESS_USERS: &str = "app.schedules.user_task.process_users";

/// A running `taskbeat local`, killed if a failing test leaves it running.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A folder with a manifest, and how to reach its backend.
pub(crate) struct Rig {
    pub(crate) dir: tempfile::TempDir,
    project: String,
    /// The emulator's endpoint, for `--aws`.
    pub(crate) aws: Option<String>,
    app: String,
    pub(crate) runtime: tokio::runtime::Runtime,
    /// Manifest text after the module and its queue (schedules, say).
    extra_manifest: std::cell::RefCell<String>,
}

impl Rig {
    pub(crate) fn new(aws: bool, app: String) -> Rig {
        let rig = Rig {
            dir: tempfile::tempdir().unwrap(),
            project: emulator::unique_project("ops"),
            aws: aws.then(emulator::endpoint),
            app,
            runtime: tokio::runtime::Runtime::new().unwrap(),
            extra_manifest: std::cell::RefCell::new(String::new()),
        };
        rig.deploy("taskbeat-user");
        if aws {
            let manifest = rig.manifest();
            rig.runtime.block_on(async {
                let sdk = emulator::sdk_config().await;
                taskbeat::provision::create_missing(
                    &manifest,
                    &aws_sdk_dynamodb::Client::new(&sdk),
                    &aws_sdk_sqs::Client::new(&sdk),
                )
                .await
                .unwrap();
            });
        }
        rig
    }

    /// Adds manifest text (after the module and its queue) to the next `deploy`.
    pub(crate) fn add_to_manifest(&self, text: &str) {
        self.extra_manifest.borrow_mut().push_str(text);
    }

    /// Writes the manifest with the `default` queue consumed by `crate_name`.
    pub(crate) fn deploy(&self, crate_name: &str) {
        let manifest = format!(
            "[project]\nname = \"{}\"\n\n[modules.user]\ncrate = \"{crate_name}\"\nqueue = \"default\"\ntimeout = 30\n\n\
             [queues.default]\nmax_receive_count = 3\n{}",
            self.project,
            self.extra_manifest.borrow()
        );
        std::fs::write(self.dir.path().join("taskbeat.toml"), manifest).unwrap();
    }

    pub(crate) fn manifest(&self) -> Manifest {
        Manifest::load(&self.dir.path().join("taskbeat.toml")).unwrap()
    }

    /// The same backend the CLI uses, in this process (to put a raw message on a queue).
    pub(crate) fn backend(&self) -> Backend {
        let manifest = self.manifest();
        match &self.aws {
            Some(_) => self.runtime.block_on(async { Backend::aws(&manifest, &emulator::sdk_config().await) }),
            None => Backend::embedded(&manifest, &self.dir.path().join(".taskbeat")).unwrap(),
        }
    }

    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new(BIN);
        command.current_dir(self.dir.path()).env_remove("TASKBEAT_MANIFEST").env_remove("TASKBEAT_DATA_DIR");
        command.env("APP_API_BASE", &self.app).env_remove("NO_COLOR");
        if let Some(endpoint) = &self.aws {
            command
                .arg("--aws")
                .env("AWS_ENDPOINT_URL", endpoint)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test");
        }
        command
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs a command that must succeed; its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "taskbeat {args:?} failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    /// Runs a command with `--output json` that must succeed; its output parsed.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(&[args, &["--output", "json"]].concat());
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("taskbeat {args:?} printed no JSON ({e}):\n{stdout}"))
    }

    /// Runs a command that must fail with exit code 1; its stderr.
    pub(crate) fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1), "taskbeat {args:?} should fail:\n{}", text(&out.stdout));
        text(&out.stderr)
    }

    pub(crate) fn start_local(&self) -> Running {
        self.start_local_with(&["--no-dashboard"]).0
    }

    /// Starts `taskbeat local --no-schedules [extra]`; the dashboard's address when it serves one.
    pub(crate) fn start_local_with(&self, extra: &[&str]) -> (Running, Option<String>) {
        let mut command = self.command();
        command.args(["local", "--no-schedules", "--grace", "5"]).args(extra);
        let (child, banner) = super::read_banner(command);
        let dashboard = banner.iter().find_map(|l| {
            l.trim()
                .strip_prefix("dashboard: ")
                .filter(|rest| rest.starts_with("http"))
                .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        });
        (Running(child), dashboard)
    }

    pub(crate) fn send(&self, args: &[&str]) -> String {
        self.ok(&[&["send", PROCESS_USERS, "--args"], args].concat()).trim().to_owned()
    }

    /// The `queues` entry of the user module.
    pub(crate) fn depth(&self) -> Value {
        let queues = self.json(&["queues"]);
        queues.as_array().unwrap().iter().find(|q| q["module"] == "user").unwrap().clone()
    }

    /// Waits until `check` holds for the user module's depth.
    pub(crate) fn wait_for_depth(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let depth = self.depth();
            if check(&depth) {
                return depth;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{what}: still {depth}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub(crate) fn status(&self, id: &str) -> Value {
        self.json(&["status", id])
    }
}

fn history(record: &Value) -> Vec<&str> {
    record["history"].as_array().unwrap().iter().map(|c| c["state"].as_str().unwrap()).collect()
}

fn ids(listing: &Value) -> Vec<String> {
    listing["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect()
}

pub(crate) fn counts(depth: &Value) -> (u64, u64, u64, u64) {
    let n = |key: &str| depth[key].as_u64().unwrap();
    (n("waiting"), n("in_flight"), n("delayed"), n("dlq"))
}

fn operator_commands(aws: bool) {
    let app = fake_app::spawn_detached(fake_app::Options::default());
    let rig = Rig::new(aws, app.base());

    // A bad deploy: the alert crate consumes `default`, so user tasks are dead-lettered, and
    // a body that is no envelope at all too.
    rig.deploy("taskbeat-alert");
    let mut local = rig.start_local();
    let first = rig.send(&[r#"[["u1","u2"],"recompute"]"#]);
    let second = rig.send(&[r#"[["u3"],"recompute"]"#]);
    let backend = rig.backend();
    rig.runtime
        .block_on(backend.queue("default").unwrap().queue.send(OutgoingMessage::new("this is not an envelope")))
        .unwrap();
    rig.wait_for_depth("three dead letters", |d| counts(d) == (0, 0, 0, 3));
    // Redriven while the bad deploy still runs, each comes straight back; the redrive moves
    // each once and ends rather than chase them.
    let chased = rig.json(&["dlq", "redrive", "--all"]);
    assert_eq!(chased[0]["moved"], 3, "{chased}");
    rig.wait_for_depth("dead-lettered again", |d| counts(d) == (0, 0, 0, 3));
    interrupt(&mut local.0);

    // queues: per module, the DLQ count.
    let depth = rig.depth();
    assert_eq!(depth["queue"], "default");
    let table = rig.ok(&["queues"]);
    assert!(table.starts_with("MODULE") && table.contains("IN FLIGHT") && table.contains("DLQ"), "{table}");
    assert!(!table.contains('\x1b'), "no colours off a terminal: {table:?}");

    // dlq list: each dead letter with its reason, still there afterwards.
    let letters = rig.json(&["dlq", "list"]);
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 3, "{letters:?}");
    let letter_of = |task_id: &str| letters.iter().find(|l| l["task_id"] == task_id).unwrap().clone();
    for id in [&first, &second] {
        let letter = letter_of(id);
        assert_eq!((letter["queue"].as_str(), letter["task"].as_str()), (Some("default"), Some(PROCESS_USERS)));
        let reason = letter["reason"].as_str().unwrap();
        assert!(reason.contains("unknown task") && reason.contains("module `alert`"), "{reason}");
        assert_eq!(letter["source_queue"], "default");
    }
    let malformed = letters.iter().find(|l| l["task_id"].is_null()).unwrap();
    assert!(malformed["reason"].as_str().unwrap().contains("malformed message"), "{malformed}");
    assert_eq!(counts(&rig.depth()).3, 3, "listing consumed nothing");
    let table = rig.ok(&["dlq", "list"]);
    assert!(table.contains("REASON") && table.contains(&first) && table.contains("unknown task"), "{table}");
    assert!(rig.fails(&["dlq", "list", "--queue", "nope"]).contains("no queue `nope`"));
    let bad_id = rig.run(&["status", "report-42"]);
    assert_eq!(bad_id.status.code(), Some(2), "a bad argument");
    assert!(text(&bad_id.stderr).contains("`report-42` is not a task id"), "{}", text(&bad_id.stderr));

    // dlq show: one in full, body and attributes as they were.
    let first_letter = letter_of(&first);
    let message_id = first_letter["message_id"].as_str().unwrap();
    let shown = rig.json(&["dlq", "show", "--message", message_id]);
    let body: Value = serde_json::from_str(shown["body"].as_str().unwrap()).unwrap();
    assert_eq!((body["id"].as_str(), body["args"][0][1].as_str()), (Some(first.as_str()), Some("u2")));
    assert_eq!(shown["attributes"]["taskbeat-dead-letter-reason"], first_letter["reason"]);
    assert!(rig.ok(&["dlq", "show", "--message", message_id]).contains("taskbeat-source-queue = default"));
    assert!(rig.fails(&["dlq", "show", "--message", "nope"]).contains("no dead letter nope"));

    // The dead-lettered tasks are FAILURE, with a history of two changes.
    let failures = rig.json(&["list", "--state", "FAILURE"]);
    assert_eq!(ids(&failures).into_iter().collect::<BTreeSet<_>>(), BTreeSet::from([first.clone(), second.clone()]));
    assert_eq!(failures["tasks"][0]["error"]["type"], "UnknownTask");
    assert_eq!(history(&rig.status(&first)), ["PENDING", "FAILURE", "PENDING", "FAILURE"]);

    // Redrive one, then the rest: counted before and after, nothing lost or duplicated.
    let redriven = rig.json(&["dlq", "redrive", "--message", message_id]);
    let report = &redriven[0];
    assert_eq!((report["queue"].as_str(), report["moved"].as_u64()), (Some("default"), Some(1)));
    assert_eq!(report["method"], if aws { "receive-send-delete" } else { "embedded" });
    assert_eq!(
        (report["messages"][0]["task_id"].as_str(), report["messages"][0]["record"].as_str()),
        (Some(first.as_str()), Some("reopened"))
    );
    assert_eq!(counts(&rig.depth()), (1, 0, 0, 2));
    assert_eq!(rig.status(&first)["state"], "PENDING");
    let table = rig.ok(&["dlq", "redrive", "--all"]);
    assert!(table.contains("moved 2 dead letters") && table.contains("task reopened"), "{table}");
    assert!(table.contains("no task id in the body"), "{table}");
    assert_eq!(counts(&rig.depth()), (3, 0, 0, 0));
    assert_eq!(rig.json(&["dlq", "redrive", "--all"])[0]["moved"], 0);
    let err = rig.fails(&["dlq", "redrive", "--message", "nope"]);
    assert!(err.contains("no dead letter nope"), "{err}");
    let usage = rig.run(&["dlq", "redrive"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(text(&usage.stderr).contains("--all"), "{}", text(&usage.stderr));

    // The fixed deploy runs them; the body that is no envelope is dead-lettered again.
    rig.deploy("taskbeat-user");
    let mut local = rig.start_local();
    for id in [&first, &second] {
        assert!(rig.run(&["watch", id, "--timeout", "60"]).status.success(), "{id} succeeds after the redrive");
    }
    assert_eq!(
        history(&rig.status(&first)),
        ["PENDING", "FAILURE", "PENDING", "FAILURE", "PENDING", "STARTED", "PROGRESS", "SUCCESS"]
    );
    rig.wait_for_depth("the malformed body back in the DLQ", |d| counts(d) == (0, 0, 0, 1));

    // A few failures, and a success.
    let explode: Vec<String> = (0..2).map(|i| rig.send(&[&format!(r#"[["x{i}"],"explode"]"#)])).collect();
    let good = rig.send(&[r#"[["u4"],"recompute"]"#]);
    for id in &explode {
        assert_eq!(rig.run(&["watch", id, "--timeout", "60"]).status.code(), Some(1));
    }
    assert!(rig.run(&["watch", &good, "--timeout", "60"]).status.success());

    // list: newest first, filters, pages.
    let all = rig.json(&["list", "--limit", "100"]);
    let all_ids = ids(&all);
    assert_eq!(all_ids.len(), 5);
    assert_eq!(&all_ids[..3], [good.as_str(), explode[1].as_str(), explode[0].as_str()]);
    let newest = &all["tasks"][0];
    assert_eq!((newest["state"].as_str(), newest["progress"].as_u64()), (Some("SUCCESS"), Some(100)));
    assert!(newest["duration_ms"].as_i64().unwrap() >= 0 && newest["age_ms"].as_i64().unwrap() >= 0);
    assert!(all["next"].is_null());
    let failed = rig.json(&["list", "--state", "failure"]);
    assert_eq!(ids(&failed).into_iter().collect::<BTreeSet<_>>(), explode.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(failed["tasks"][0]["error"]["type"], "InvalidArguments");
    let succeeded = rig.json(&["list", "--task", PROCESS_USERS, "--state", "SUCCESS", "--since", "1h"]);
    assert_eq!(ids(&succeeded), [good.clone(), second.clone(), first.clone()]);
    assert!(ids(&rig.json(&["list", "--since", "2099-01-01T00:00:00Z"])).is_empty());
    let mut paged = Vec::new();
    let mut page = rig.json(&["list", "--limit", "2"]);
    loop {
        paged.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => page = rig.json(&["list", "--limit", "2", "--cursor", next]),
            None => break,
        }
    }
    assert_eq!(paged, all_ids, "pages of two: every task once, in order");
    let table = rig.ok(&["list", "--limit", "2"]);
    assert!(table.starts_with("ID") && table.contains("DURATION") && table.contains("more: add --cursor "), "{table}");
    assert!(!table.contains('\x1b'));
    let bad = rig.run(&["list", "--cursor", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("invalid cursor `yesterday`"), "{}", text(&bad.stderr));
    let bad = rig.run(&["list", "--since", "a while"]);
    assert!(text(&bad.stderr).contains("30s, 15m, 1h"), "{}", text(&bad.stderr));
    let bad = rig.run(&["list", "--state", "DONE"]);
    assert!(text(&bad.stderr).contains("PENDING, STARTED"), "{}", text(&bad.stderr));

    // status: the record and its history.
    let table = rig.ok(&["status", &first]);
    assert!(table.contains("history") && table.matches("PENDING").count() >= 2 && table.contains("SUCCESS"), "{table}");

    // retry: a new id whose parent is the old one; refused for a task that is not FAILURE/REVOKED.
    let retried = rig.json(&["retry", &explode[0]]);
    let retry_id = retried["id"].as_str().unwrap().to_owned();
    assert_eq!(retried["retry_of"], explode[0].as_str());
    let twice = rig.fails(&["retry", &explode[0]]);
    assert!(twice.contains("was retried less than 10 s ago"), "one retry per click, not two: {twice}");
    assert_eq!(rig.run(&["watch", &retry_id, "--timeout", "60"]).status.code(), Some(1));
    let record = rig.status(&retry_id);
    assert_eq!(
        (record["parent_id"].as_str(), record["args"][1].as_str()),
        (Some(explode[0].as_str()), Some("explode"))
    );
    let err = rig.fails(&["retry", &good]);
    assert!(err.contains("is SUCCESS") && err.contains("FAILURE or REVOKED"), "{err}");
    let later = rig.ok(&["send", PROCESS_USERS, "--args", r#"[["u5"],"recompute"]"#, "--countdown", "600"]);
    rig.ok(&["revoke", later.trim()]);
    let again = rig.ok(&["retry", later.trim(), "--wait"]);
    assert!(again.contains("SUCCESS"), "{again}");

    // purge: refused without a terminal or --yes; then the queue and the DLQ are empty.
    rig.ok(&["send", PROCESS_USERS, "--args", r#"[["u6"],"recompute"]"#, "--countdown", "600"]);
    // Delayed: this one, and the revoked one's message (acknowledged unrun when due).
    assert_eq!(counts(&rig.depth()).2, 2, "two delayed");
    let err = rig.fails(&["purge", "default"]);
    assert!(err.contains("stdin is not a terminal") && err.contains("--yes"), "{err}");
    assert_eq!(counts(&rig.depth()), (0, 0, 2, 1), "nothing purged without a confirmation");
    assert_eq!(rig.json(&["purge", "default", "--yes"])["purged"], 2);
    let purged = rig.json(&["purge", "default", "--dlq", "--yes"]);
    assert_eq!((purged["dlq"].as_bool(), purged["purged"].as_u64()), (Some(true), Some(1)));
    assert_eq!(counts(&rig.depth()), (0, 0, 0, 0));
    assert!(rig.fails(&["purge", "nope", "--yes"]).contains("no queue `nope`"));
    interrupt(&mut local.0);

    // inspect registered and completions need no backend, and work with --aws all the same.
    let registered = rig.json(&["inspect", "registered"]);
    let user = registered.as_array().unwrap().iter().find(|m| m["crate"] == "taskbeat-user").unwrap();
    assert_eq!(user["queue"], "default");
    let task = user["tasks"].as_array().unwrap().iter().find(|t| t["name"] == PROCESS_USERS).unwrap();
    assert_eq!(task["params"], serde_json::json!(["user_ids", "action"]));
    let chat = registered.as_array().unwrap().iter().find(|m| m["crate"] == "taskbeat-chat").unwrap();
    assert!(chat["queue"].is_null(), "linked, not in this manifest");
    let table = rig.ok(&["inspect", "registered"]);
    assert!(table.contains(&format!("    * {PROCESS_USERS}(user_ids, action)")), "{table}");
    completions(&rig);
}

fn completions(rig: &Rig) {
    let bash = rig.ok(&["completions", "bash"]);
    let script = rig.dir.path().join("taskbeat.bash");
    std::fs::write(&script, &bash).unwrap();
    let checked = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(checked.status.success(), "bash -n: {}", text(&checked.stderr));
    assert!(bash.contains("dlq") && bash.contains("redrive") && bash.contains("--cursor"));
    assert!(rig.ok(&["completions", "zsh"]).starts_with("#compdef taskbeat"));
    assert!(rig.ok(&["completions", "fish"]).contains("complete -c taskbeat"));
    assert_eq!(rig.run(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn operator_commands_on_the_embedded_backend() {
    operator_commands(false);
}

#[test]
fn operator_commands_on_aws_through_the_emulator() {
    operator_commands(true);
}

/// On a terminal, `purge` asks first (anything but yes keeps the messages), and tables are
/// coloured unless NO_COLOR is set. (`script` from util-linux gives the command a terminal and
/// types the answer.)
#[test]
fn on_a_terminal_purge_asks_and_tables_are_coloured() {
    let dir = tempfile::tempdir().unwrap();
    let taskbeat = |args: &[&str]| Command::new(BIN).current_dir(dir.path()).args(args).output().unwrap();
    let sent = taskbeat(&["send", PROCESS_USERS, "--args", r#"[["u1"],"recompute"]"#, "--countdown", "600"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let delayed = || {
        let queues: Value = serde_json::from_slice(&taskbeat(&["queues", "--output", "json"]).stdout).unwrap();
        queues.as_array().unwrap().iter().find(|q| q["queue"] == "default").unwrap()["delayed"].as_u64().unwrap()
    };
    let on_terminal = |args: &str, reply: &str, no_colour: bool| {
        let mut command = Command::new("script");
        if no_colour {
            command.env("NO_COLOR", "1");
        } else {
            command.env_remove("NO_COLOR");
        }
        let mut child = command
            .current_dir(dir.path())
            .args(["-qec", &format!("'{BIN}' {args}"), "/dev/null"])
            .env_remove("TASKBEAT_MANIFEST")
            .env_remove("TASKBEAT_DATA_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("`script` (util-linux) runs the command on a terminal");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), reply.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), text(&out.stdout))
    };
    let (_, table) = on_terminal("list", "", false);
    assert!(table.contains("\x1b[1mID") && table.contains("\x1b[2mPENDING"), "{table:?}");
    let (_, table) = on_terminal("list", "", true);
    assert!(table.contains("PENDING") && !table.contains('\x1b'), "{table:?}");
    let answer = |reply: &str| on_terminal("purge default", reply, false);
    let (code, said) = answer("n\n");
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("Purge queue default") && said.contains("[y/N]") && said.contains("not purged"), "{said}");
    assert_eq!(delayed(), 1, "kept");
    let (code, said) = answer("y\n");
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("purged queue default: 1 message"), "{said}");
    assert_eq!(delayed(), 0);
}
