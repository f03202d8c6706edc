//! Celery compatibility with real Celery from PyPI (`celery[sqs]`, in the venv the test command
//! makes) against the emulator: a Python script using Celery's own API sends tasks over kombu's
//! SQS transport and reads results through Celery's DynamoDB result backend, while taskbeat's
//! worker (as `taskbeat local --aws` runs it: the AWS backend, the user module's batch handler)
//! consumes the queue and writes the results.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::{Value, json};
use taskbeat::backend::Backend;
use taskbeat::celery::results::{CeleryResultWriter, KeyForm, ResultWriteError, meta};
use taskbeat::handler::{BatchHandler, HandlerOptions};
use taskbeat::local::{LocalWorker, Phase};
use taskbeat::manifest::Manifest;
use taskbeat::{Client, TaskState};
use taskbeat_e2e::{emulator, fake_app};
use tokio::sync::watch;
use uuid::Uuid;

/// The variable the test command sets to the Python of the Celery venv.
const PYTHON_VAR: &str = "TASKBEAT_TEST_CELERY_PYTHON";

/// The Celery venv's Python. Fails the test (not skips it) when the test command did not make it.
fn celery_python() -> String {
    std::env::var(PYTHON_VAR).unwrap_or_else(|_| {
        panic!("{PYTHON_VAR} is not set: run the tests with scripts/test, which creates .venv-celery with celery[sqs]")
    })
}

/// The user module's manifest, its queue serving Celery's `default` under `prefix`, and Celery
/// results on.
fn manifest_text(project: &str, prefix: &str) -> String {
    format!(
        "{}celery_queue = \"default\"\ncelery_queue_name_prefix = \"{prefix}\"\n\n\
         [celery]\nresults = true\nresults_table = \"{project}-celery\"\nresult_expires = 3600\n",
        emulator::user_manifest(project)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_send_task_and_async_result_work_against_taskbeat() {
    let python = celery_python();
    let endpoint = emulator::endpoint();
    let sdk = emulator::sdk_config().await;
    let project = emulator::unique_project("celery");
    let prefix = format!("{project}.");
    let manifest = Manifest::parse(&manifest_text(&project, &prefix), "test").unwrap();
    // kombu's name for Celery queue `default` under that prefix (`.` becomes `-`).
    assert_eq!(manifest.sqs_queue_name("default"), format!("{project}-default"));
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    taskbeat::provision::create_missing(&manifest, &dynamodb, &aws_sdk_sqs::Client::new(&sdk)).await.unwrap();

    // taskbeat's side: the user module's worker, as `taskbeat local --aws` builds it.
    let app = fake_app::spawn(fake_app::Options { delay: Duration::from_millis(300), ..Default::default() }).await;
    let manifest = Arc::new(manifest);
    let backend = Backend::aws(&manifest, &sdk);
    let module = &manifest.modules["user"];
    let pair = backend.queue("default").unwrap().clone();
    let options = HandlerOptions {
        progress_interval: Duration::from_millis(100),
        default_time_limit: module.timeout(),
        ..HandlerOptions::default()
    };
    let handler = BatchHandler::new(
        Arc::new(taskbeat_user::registry_with_api_base(&app.base())),
        backend.store.clone(),
        pair.dead_letters.clone(),
        "default",
        options,
    )
    .with_client(Client::new(manifest.clone(), backend.clone(), "celery-e2e"));
    let arn = LocalWorker::local_arn(&manifest.sqs_queue_name("default"));
    let worker = LocalWorker::for_module("user", module, pair.queue.clone(), handler, arn);
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let runtime = tokio::spawn(taskbeat::local::run(vec![worker], phase_rx));

    // The Flask app's side: Celery's own API.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/celery_acceptance.py");
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(&python)
            .arg(&script)
            .env("CELERY_ACCEPTANCE_ENDPOINT", &endpoint)
            .env("CELERY_ACCEPTANCE_PREFIX", &prefix)
            .env("CELERY_ACCEPTANCE_TABLE", format!("{project}-celery"))
            .env("CELERY_ACCEPTANCE_TTL", "3600")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Celery script finished within 3 minutes")
    .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    phase_tx.send(Phase::Abandon).unwrap();
    runtime.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the Celery script failed ({}):\n{stdout}\n{stderr}", output.status);

    let checks: std::collections::BTreeMap<String, Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| (v["check"].as_str().unwrap().to_owned(), v))
        .collect();
    assert_eq!(checks.len(), 5, "{stdout}\n{stderr}");
    let record = |check: &str| {
        let id = Uuid::parse_str(checks[check]["id"].as_str().unwrap()).unwrap();
        let store = backend.store.clone();
        async move { store.get(id).await.unwrap().unwrap() }
    };

    // .get() returned the summary the record (and so the CLI) shows.
    let progress = record("progress").await;
    assert_eq!(progress.state, TaskState::Success);
    assert_eq!(Some(&checks["progress"]["summary"]), progress.result.as_ref());
    assert_eq!(
        checks["progress"]["summary"],
        json!({"processed": 4, "failed": [{"id": "missing-7", "reason": "user not found (404)"}]})
    );
    assert!(checks["progress"]["meta"]["status"].as_str().unwrap().starts_with("processing users: "));

    // The task's error type name and message.
    let failure = record("failure").await;
    let error = failure.error.unwrap();
    assert_eq!(checks["failure"]["type"], error.kind);
    assert_eq!(checks["failure"]["message"], error.message);
    assert_eq!(error.kind, "InvalidArguments");

    // Countdown: the record started after the countdown (the script checked date_done too).
    let later = record("countdown").await;
    assert_eq!(later.state, TaskState::Success);
    let sent = chrono::DateTime::parse_from_rfc3339(checks["countdown"]["sent"].as_str().unwrap()).unwrap();
    assert!(later.started_at.unwrap() >= sent + chrono::Duration::seconds(2), "{later:?}");

    let expired = record("expired").await;
    assert_eq!(expired.state, TaskState::Revoked);
    assert!(checks["expired"]["message"].as_str().unwrap().contains("expired"), "{}", checks["expired"]);

    // A pickled message is refused with the setting to change, recorded where Celery reads it.
    let pickled = record("pickle").await;
    assert_eq!(pickled.state, TaskState::Failure);
    assert_eq!(checks["pickle"]["type"], "MalformedMessage");
    assert!(checks["pickle"]["message"].as_str().unwrap().contains("task_serializer = 'json'"), "{}", checks["pickle"]);

    // The item as Celery's backend keeps it, and a stored SUCCESS is never overwritten.
    let table = format!("{project}-celery");
    let key = KeyForm::default().key(progress.id);
    assert_eq!(key, format!("b'celery-task-meta-{}'", progress.id));
    let get = || {
        dynamodb.get_item().table_name(&table).key("id", AttributeValue::S(key.clone())).consistent_read(true).send()
    };
    let item = get().await.unwrap().item.expect("Celery's item of the task");
    let stored: Value = serde_json::from_slice(item["result"].as_b().unwrap().as_ref()).unwrap();
    assert_eq!(stored["status"], "SUCCESS");
    assert_eq!(stored["task_id"], progress.id.to_string());
    let timestamp: f64 = item["timestamp"].as_n().unwrap().parse().unwrap();
    let ttl: i64 = item["ttl"].as_n().unwrap().parse().unwrap();
    assert!((ttl as f64 - timestamp - 3600.0).abs() < 2.0, "ttl {ttl}, timestamp {timestamp}");
    let writer = CeleryResultWriter::new(dynamodb.clone(), manifest.celery_results().unwrap());
    let late = meta(progress.id, TaskState::Failure, json!({"exc_type": "Late"}), chrono::Utc::now());
    assert_eq!(writer.write(progress.id, &late).await, Err(ResultWriteError::SuccessKept(progress.id)));
    let again = get().await.unwrap().item.unwrap();
    assert_eq!(again["result"], item["result"]);
}
