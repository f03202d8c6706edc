//! The built `user` binary under a Lambda Runtime API served by this test: it gets an SQS event,
//! and the batch response it posts back names exactly the record to redeliver. Its stdout holds
//! flat JSON log lines (request id, message id, task id, task, transition, duration; never an
//! argument or a secret the test planted) and the batch's CloudWatch EMF lines.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};
use taskbeat::Envelope;
use taskbeat::manifest::Manifest;
use taskbeat_e2e::{emulator, fake_app};
use tokio::sync::mpsc;

#[derive(Clone)]
struct RuntimeApi {
    event: Arc<Mutex<Option<Value>>>,
    posted: mpsc::UnboundedSender<(String, Value)>,
}

async fn next(State(api): State<RuntimeApi>) -> (StatusCode, HeaderMap, String) {
    let Some(event) = api.event.lock().unwrap().take() else {
        // One invocation only: later polls wait, as the real API does between invocations.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() + 30_000;
    let mut headers = HeaderMap::new();
    headers.insert("lambda-runtime-aws-request-id", HeaderValue::from_static("req-0001"));
    headers.insert("lambda-runtime-deadline-ms", HeaderValue::from_str(&deadline.to_string()).unwrap());
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:user"),
    );
    headers.insert("lambda-runtime-trace-id", HeaderValue::from_static("Root=1-00000000-000000000000000000000000"));
    (StatusCode::OK, headers, event.to_string())
}

async fn response(State(api): State<RuntimeApi>, Path(id): Path<String>, body: String) -> StatusCode {
    api.posted.send((format!("response {id}"), serde_json::from_str(&body).unwrap_or(Value::String(body)))).unwrap();
    StatusCode::ACCEPTED
}

async fn error(State(api): State<RuntimeApi>, Path(id): Path<String>, body: String) -> StatusCode {
    api.posted.send((format!("error {id}"), Value::String(body))).unwrap();
    StatusCode::ACCEPTED
}

async fn init_error(State(api): State<RuntimeApi>, body: String) -> StatusCode {
    api.posted.send(("init error".into(), Value::String(body))).unwrap();
    StatusCode::ACCEPTED
}

fn record(message_id: &str, body: &str, queue_arn: &str) -> Value {
    json!({
        "messageId": message_id,
        "receiptHandle": format!("handle-{message_id}"),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1764756000000",
            "SenderId": "123456789012",
            "ApproximateFirstReceiveTimestamp": "1764756000001"
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1"
    })
}

/// Values that must never reach the logs: arguments and the function's AWS secret key.
const PLANTED_USER: &str = "u-planted-3b8e";
const PLANTED_DOWN_USER: &str = "down-planted-9c1f";
const PLANTED_BODY_SECRET: &str = "sk-planted-body-77aa";
const PLANTED_AWS_SECRET: &str = "planted-aws-secret-5e2d";

#[tokio::test]
async fn the_binary_answers_an_sqs_event_with_its_batch_response() {
    let app = fake_app::spawn(fake_app::Options::default()).await;
    let sdk = emulator::sdk_config().await;
    let project = emulator::unique_project("bin");
    let manifest = Manifest::parse(&emulator::user_manifest(&project), "test").unwrap();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    taskbeat::provision::create_missing(&manifest, &dynamodb, &sqs).await.unwrap();
    let dlq_url =
        sqs.get_queue_url().queue_name(manifest.sqs_dlq_name("default")).send().await.unwrap().queue_url.unwrap();

    let ok = Envelope::new(
        "app.schedules.user_task.process_users",
        vec![json!([PLANTED_USER, "u2"]), json!("recompute")],
        Default::default(),
    );
    let flaky = Envelope::new(
        "app.schedules.user_task.process_users",
        vec![json!([PLANTED_DOWN_USER]), json!("recompute")],
        Default::default(),
    );
    let arn = format!("arn:aws:sqs:us-east-1:123456789012:{}", manifest.sqs_queue_name("default"));
    let garbage = format!("<xml>not an envelope: {PLANTED_BODY_SECRET}</xml>");
    let event = json!({ "Records": [
        record("msg-ok", &ok.to_body(), &arn),
        record("msg-flaky", &flaky.to_body(), &arn),
        record("msg-garbage", &garbage, &arn),
    ]});

    let (tx, mut rx) = mpsc::unbounded_channel();
    let state = RuntimeApi { event: Arc::new(Mutex::new(Some(event))), posted: tx };
    let router = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/response", post(response))
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let mut child = Command::new(env!("CARGO_BIN_EXE_user"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "user")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", PLANTED_AWS_SECRET)
        .env("AWS_ENDPOINT_URL", emulator::endpoint())
        .env("TASKBEAT_TABLE", manifest.table_name())
        .env("TASKBEAT_DLQ_URL", &dlq_url)
        .env("TASKBEAT_QUEUE", "default")
        .env("APP_API_BASE", app.base())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let posted = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await;
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let (kind, body) = posted.unwrap_or_else(|_| panic!("no response posted; function output:\n{logs}")).unwrap();
    assert_eq!(kind, "response req-0001", "{body}\n{logs}");
    assert_eq!(body, json!({ "batchItemFailures": [{ "itemIdentifier": "msg-flaky" }] }), "{logs}");

    let item = dynamodb
        .get_item()
        .table_name(manifest.table_name())
        .key("id", aws_sdk_dynamodb::types::AttributeValue::S(ok.id.to_string()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(item["state"].as_s().unwrap(), "SUCCESS");
    let dead = sqs.receive_message().queue_url(&dlq_url).wait_time_seconds(1).send().await.unwrap();
    assert_eq!(dead.messages.unwrap_or_default()[0].body.as_deref(), Some(garbage.as_str()));

    // Every stdout line is JSON: log lines, and the batch's EMF documents (with `_aws`).
    let (metrics, lines): (Vec<Value>, Vec<Value>) = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .partition(|l| l.get("_aws").is_some());
    for planted in [PLANTED_USER, PLANTED_DOWN_USER, PLANTED_BODY_SECRET, PLANTED_AWS_SECRET] {
        assert!(!logs.contains(planted), "{planted} leaked into the output:\n{logs}");
    }
    assert!(lines.iter().all(|l| l["timestamp"].is_string() && l["level"].is_string()), "{logs}");
    let line = |message_id: &str, message: &str| {
        lines
            .iter()
            .find(|l| l["message_id"] == message_id && l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line for {message_id}:\n{logs}"))
            .clone()
    };
    for (message_id, envelope, transition) in [("msg-ok", &ok, "SUCCESS"), ("msg-flaky", &flaky, "RETRY")] {
        assert_eq!(line(message_id, "task started")["transition"], "STARTED");
        let finished = line(message_id, "task finished");
        assert_eq!(finished["request_id"], "req-0001", "the Lambda request id, at the top level: {finished}");
        assert_eq!(finished["task_id"], envelope.id.to_string());
        assert_eq!(finished["task"], "app.schedules.user_task.process_users");
        assert_eq!(finished["transition"], transition);
        assert!(finished["duration_ms"].is_u64(), "{finished}");
    }
    let dead_lettered = line("msg-garbage", "dead-lettering record");
    assert_eq!(
        (dead_lettered["request_id"].as_str(), dead_lettered["error"].as_str()),
        (Some("req-0001"), Some("MalformedMessage"))
    );

    // The batch's metrics: one EMF document for the task that ran, one for the dead letter.
    assert_eq!(metrics.len(), 2, "{metrics:#?}");
    for document in &metrics {
        assert_eq!(document["_aws"]["CloudWatchMetrics"][0]["Namespace"], "taskbeat");
        assert!(document["_aws"]["Timestamp"].is_i64());
        assert_eq!(document["module"], "user");
    }
    let ran =
        metrics.iter().find(|d| d["task"] == "app.schedules.user_task.process_users").expect("the task's metrics");
    assert_eq!(
        [&ran["TasksSucceeded"], &ran["TasksRetried"], &ran["TasksFailed"], &ran["RecordsHandedBack"]],
        [&json!(1), &json!(1), &json!(0), &json!(1)],
        "{ran}"
    );
    assert_eq!(ran["TaskDuration"].as_array().map(Vec::len), Some(2), "{ran}");
    assert_eq!(ran["_aws"]["CloudWatchMetrics"][1]["Dimensions"], json!([["module", "task"]]));
    let rest = metrics.iter().find(|d| d.get("task").is_none()).expect("the dead letter's metrics");
    assert_eq!(rest["TasksDeadLettered"], 1, "{rest}");
}
