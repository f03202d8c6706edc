//! The AWS path on the emulator: queues and table created from the same definitions as the
//! infrastructure, tasks sent with `Client::send`, received with the SDK, handed to the user
//! function's handler as the `SqsEvent` Lambda delivers, and read back with GetItem.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use serde_json::{Value, json};
use taskbeat::backend::Backend;
use taskbeat::handler::{BatchHandler, HandlerOptions};
use taskbeat::manifest::Manifest;
use taskbeat::queue::REASON_ATTRIBUTE;
use taskbeat::store::{ClaimOutcome, ClaimRequest, Completion, ListBy, ListQuery, StoreError};
use taskbeat::{Client, SendOptions, TaskState};
use taskbeat_e2e::{emulator, fake_app};
use tokio::time::Instant;

struct Aws {
    manifest: Manifest,
    backend: Backend,
    sqs: aws_sdk_sqs::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    queue_url: String,
    dlq_url: String,
    queue_arn: String,
}

async fn setup() -> Aws {
    let sdk = emulator::sdk_config().await;
    let project = emulator::unique_project("e2e");
    let manifest = Manifest::parse(&emulator::user_manifest(&project), "test").unwrap();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    taskbeat::provision::create_missing(&manifest, &dynamodb, &sqs).await.unwrap();
    let url = |name: String| {
        let sqs = sqs.clone();
        async move { sqs.get_queue_url().queue_name(name).send().await.unwrap().queue_url.unwrap() }
    };
    let queue_url = url(manifest.sqs_queue_name("default")).await;
    let dlq_url = url(manifest.sqs_dlq_name("default")).await;
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let backend = Backend::aws(&manifest, &sdk);
    Aws { manifest, backend, sqs, dynamodb, queue_url, dlq_url, queue_arn }
}

async fn receive(sqs: &aws_sdk_sqs::Client, url: &str, want: usize) -> Vec<Message> {
    let mut messages = Vec::new();
    let started = Instant::now();
    while messages.len() < want && started.elapsed() < Duration::from_secs(20) {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(60)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        messages.extend(out.messages.unwrap_or_default());
    }
    messages
}

/// The event exactly as Lambda's SQS event source mapping delivers it (its JSON shape).
fn lambda_event(messages: &[Message], queue_arn: &str) -> SqsEvent {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attributes: serde_json::Map<String, Value> = m
                .attributes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), Value::String(v)))
                .collect();
            json!({
                "messageId": m.message_id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body,
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

fn handler(aws: &Aws, api_base: &str) -> BatchHandler {
    let pair = aws.backend.queue("default").unwrap();
    BatchHandler::new(
        Arc::new(taskbeat_user::registry_with_api_base(api_base)),
        aws.backend.store.clone(),
        pair.dead_letters.clone(),
        "default",
        HandlerOptions::default(),
    )
}

async fn get_item(aws: &Aws, id: uuid::Uuid) -> std::collections::HashMap<String, AttributeValue> {
    aws.dynamodb
        .get_item()
        .table_name(aws.manifest.table_name())
        .key("id", AttributeValue::S(id.to_string()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .expect("item exists")
}

fn s<'a>(item: &'a std::collections::HashMap<String, AttributeValue>, key: &str) -> &'a str {
    item.get(key).and_then(|v| v.as_s().ok()).unwrap_or_else(|| panic!("{key} is not a string in {item:?}"))
}

fn n(item: &std::collections::HashMap<String, AttributeValue>, key: &str) -> f64 {
    item.get(key)
        .and_then(|v| v.as_n().ok())
        .unwrap_or_else(|| panic!("{key} is not a number in {item:?}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn user_tasks_run_from_sqs_to_dynamodb() {
    let app = fake_app::spawn(fake_app::Options {
        inactive: vec!["old1".into(), "old2".into(), "old3".into()],
        page_size: 2,
        ..Default::default()
    })
    .await;
    let aws = setup().await;
    let client = Client::new(Arc::new(aws.manifest.clone()), aws.backend.clone(), "e2e");
    let sends = [
        ("app.schedules.user_task.process_users", vec![json!(["u1", "u2"]), json!("recompute")]),
        ("app.schedules.user_task.process_users", vec![json!(["missing-7", "u3"]), json!("activate")]),
        ("app.schedules.user_task.cleanup_inactive_users", vec![json!(30)]),
    ];
    let mut ids = Vec::new();
    for (task, args) in sends {
        ids.push(client.send(task, args, Default::default(), SendOptions::default()).await.unwrap());
    }
    for id in &ids {
        assert_eq!(s(&get_item(&aws, *id).await, "state"), "PENDING");
    }

    let messages = receive(&aws.sqs, &aws.queue_url, 3).await;
    assert_eq!(messages.len(), 3);
    let event = lambda_event(&messages, &aws.queue_arn);
    let response = handler(&aws, &app.base()).handle(event, Some(Instant::now() + Duration::from_secs(30))).await;
    assert!(response.batch_item_failures.is_empty(), "{:?}", response.batch_item_failures);

    let first = get_item(&aws, ids[0]).await;
    assert_eq!(s(&first, "state"), "SUCCESS");
    assert_eq!(n(&first, "progress"), 100.0);
    assert_eq!(s(&first, "task"), "app.schedules.user_task.process_users");
    assert_eq!(s(&first, "queue"), "default");
    let result = first["result"].as_m().unwrap();
    assert_eq!(result["processed"].as_n().unwrap(), "2");
    for key in ["created_at", "started_at", "finished_at", "updated_at"] {
        let ts = s(&first, key);
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'), "{key} = {ts}");
    }
    assert!(n(&first, "ttl") > chrono::Utc::now().timestamp() as f64);
    assert!(first["meta"].as_m().is_ok() && s(&first, "status").contains("2/2"));
    assert!(!first.contains_key("lease_until"), "the lease is released when finished");

    let second = get_item(&aws, ids[1]).await;
    let failed = second["result"].as_m().unwrap()["failed"].as_l().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].as_m().unwrap()["id"].as_s().unwrap(), "missing-7");

    let third = get_item(&aws, ids[2]).await;
    assert_eq!(third["result"].as_m().unwrap()["deactivated"].as_n().unwrap(), "3");
    assert_eq!(app.calls.lock().unwrap().deactivated, vec!["old1", "old2", "old3"]);

    // Listing goes through the indexes.
    let by_task = aws
        .backend
        .store
        .list(&ListQuery { by: ListBy::Task("app.schedules.user_task.process_users".into()), since: None, limit: 10 })
        .await
        .unwrap();
    assert_eq!(by_task.len(), 2);
    assert!(by_task[0].created_at >= by_task[1].created_at, "newest first");
    let by_state = aws
        .backend
        .store
        .list(&ListQuery { by: ListBy::State(TaskState::Success), since: None, limit: 2 })
        .await
        .unwrap();
    assert_eq!(by_state.len(), 2);
}

#[tokio::test]
async fn a_malformed_body_dead_letters_only_itself() {
    let app = fake_app::spawn(fake_app::Options::default()).await;
    let aws = setup().await;
    let client = Client::new(Arc::new(aws.manifest.clone()), aws.backend.clone(), "e2e");
    let good = client
        .send(
            "app.schedules.user_task.process_users",
            vec![json!(["u1"]), json!("deactivate")],
            Default::default(),
            SendOptions::default(),
        )
        .await
        .unwrap();
    aws.sqs.send_message().queue_url(&aws.queue_url).message_body("{\"task\": oops").send().await.unwrap();

    let messages = receive(&aws.sqs, &aws.queue_url, 2).await;
    let response = handler(&aws, &app.base()).handle(lambda_event(&messages, &aws.queue_arn), None).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(s(&get_item(&aws, good).await, "state"), "SUCCESS");

    let dead = receive(&aws.sqs, &aws.dlq_url, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body.as_deref(), Some("{\"task\": oops"));
    let reason = dead[0].message_attributes.as_ref().unwrap()[REASON_ATTRIBUTE].string_value.clone().unwrap();
    assert!(reason.contains("not JSON"), "{reason}");
}

#[tokio::test]
async fn the_dynamodb_store_keeps_its_conditions() {
    let aws = setup().await;
    let store = aws.backend.store.clone();
    let id = uuid::Uuid::new_v4();
    let claim = ClaimRequest {
        id,
        task: "app.schedules.user_task.process_users".into(),
        queue: "default".into(),
        args: vec![json!(["u1"]), json!("recompute")],
        kwargs: Default::default(),
        retries: 0,
        parent_id: None,
        root_id: None,
        lease: chrono::Duration::seconds(60),
    };
    // No PENDING record (a producer that wrote only the message): the claim creates it.
    assert!(matches!(store.claim(&claim).await.unwrap(), ClaimOutcome::Claimed(_)));
    assert!(matches!(store.claim(&claim).await.unwrap(), ClaimOutcome::Busy { .. }));
    let update = taskbeat::store::ProgressUpdate { progress: Some(40), status: Some("状态 ✓".into()), meta: None };
    store.progress(id, &update).await.unwrap();
    let mut done = Completion::new(id, &claim.task, "default", TaskState::Success);
    done.result = Some(json!({ "processed": 1, "note": "ünïcödé" }));
    store.complete(&done).await.unwrap();
    let late = Completion::new(id, &claim.task, "default", TaskState::Failure);
    assert!(matches!(store.complete(&late).await, Err(StoreError::Terminal { state: TaskState::Success, .. })));
    assert!(matches!(store.progress(id, &update).await, Err(StoreError::Terminal { .. })));
    assert_eq!(store.claim(&claim).await.unwrap(), ClaimOutcome::Finished(TaskState::Success));
    let record = store.get(id).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Success);
    assert_eq!(record.status.as_deref(), Some("状态 ✓"));
    assert_eq!(record.result, done.result);
    assert!(matches!(store.progress(uuid::Uuid::new_v4(), &update).await, Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn dynamodb_markers_are_taken_once_per_window() {
    let aws = setup().await;
    let store = aws.backend.store.clone();
    let window = Duration::from_millis(800);
    assert!(store.acquire_marker("alert:db-down", window).await.unwrap());
    assert!(!store.acquire_marker("alert:db-down", window).await.unwrap());
    assert!(store.acquire_marker("alert:cache-down", window).await.unwrap());
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(store.acquire_marker("alert:db-down", window).await.unwrap(), "free again after the window");
    // Markers stay out of the task indexes.
    let listed =
        store.list(&ListQuery { by: ListBy::State(TaskState::Pending), since: None, limit: 50 }).await.unwrap();
    assert!(listed.is_empty());
}
