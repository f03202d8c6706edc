//! FIFO queues on the embedded backend: order per group, deduplication by task id, a failed
//! message holds back the rest of its group, countdowns refused.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use taskbeat::backend::Backend;
use taskbeat::event::sqs_event;
use taskbeat::handler::{BatchHandler, HandlerOptions};
use taskbeat::manifest::Manifest;
use taskbeat::queue::{OutgoingMessage, QueueError};
use taskbeat::sqlite::Db;
use taskbeat::{Client, Registry, SendError, SendOptions, TaskContext, TaskError, TaskState};

const MANIFEST: &str = r#"
[project]
name = "fifo"
default_queue = "ordered"

[modules.test]
crate = "test"
queue = "ordered"

[queues.ordered]
fifo = true
"#;

fn setup(log: Arc<Mutex<Vec<String>>>) -> (Client, BatchHandler) {
    let manifest = Manifest::parse(MANIFEST, "test").unwrap();
    assert_eq!(manifest.sqs_queue_name("ordered"), "fifo-ordered.fifo");
    assert_eq!(manifest.sqs_dlq_name("ordered"), "fifo-ordered-dlq.fifo");
    let backend = Backend::embedded_on(&manifest, Db::open(Path::new(":memory:")).unwrap());
    let client = Client::new(Arc::new(manifest), backend.clone(), "test");
    let registry =
        Registry::new("test").task("t.step", &["name", "fail"], move |_ctx: TaskContext, a: Map<String, Value>| {
            let log = log.clone();
            async move {
                let name = a["name"].as_str().unwrap_or_default().to_owned();
                log.lock().unwrap().push(name.clone());
                if a["fail"] == json!(true) {
                    return Err(TaskError::retryable("Busy", format!("{name} failed")));
                }
                Ok(name)
            }
        });
    let pair = backend.queue("ordered").unwrap();
    let handler = BatchHandler::new(
        Arc::new(registry),
        backend.store.clone(),
        pair.dead_letters.clone(),
        "ordered",
        HandlerOptions::default(),
    )
    .with_client(client.clone());
    (client, handler)
}

fn group(name: &str) -> SendOptions {
    SendOptions { group_id: Some(name.to_owned()), ..SendOptions::default() }
}

#[tokio::test]
async fn a_failure_holds_back_the_rest_of_its_group_only() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (client, handler) = setup(log.clone());
    let a1 = client.send("t.step", vec![json!("A1"), json!(true)], Map::new(), group("A")).await.unwrap();
    let a2 = client.send("t.step", vec![json!("A2"), json!(false)], Map::new(), group("A")).await.unwrap();
    let b3 = client.send("t.step", vec![json!("B3"), json!(false)], Map::new(), group("B")).await.unwrap();
    let queue = client.backend().queue("ordered").unwrap().queue.clone();
    let batch = queue.receive(10, Duration::ZERO, Duration::from_secs(60)).await.unwrap();
    assert_eq!(batch.iter().map(|m| m.group_id.clone().unwrap()).collect::<Vec<_>>(), vec!["A", "A", "B"], "in order");
    let response = handler.handle(sqs_event("arn", "local", &batch), None).await;
    let mut failed: Vec<_> = response.batch_item_failures.iter().map(|f| f.item_identifier.clone()).collect();
    failed.sort();
    let mut expected = vec![batch[0].message_id.clone(), batch[1].message_id.clone()];
    expected.sort();
    assert_eq!(failed, expected, "A1 and A2 handed back");
    assert_eq!(*log.lock().unwrap(), vec!["A1", "B3"], "A2 did not run; B3 did");
    let store = &client.backend().store;
    assert_eq!(store.get(a1).await.unwrap().unwrap().state, TaskState::Retry);
    assert_eq!(store.get(a2).await.unwrap().unwrap().state, TaskState::Pending);
    assert_eq!(store.get(b3).await.unwrap().unwrap().state, TaskState::Success);

    // While A1 waits for its retry, group A is blocked and other groups flow.
    queue.delete(&[batch[2].receipt_handle.clone()]).await.unwrap();
    client.send("t.step", vec![json!("C4"), json!(false)], Map::new(), group("C")).await.unwrap();
    let next = queue.receive(10, Duration::ZERO, Duration::from_secs(60)).await.unwrap();
    assert_eq!(next.iter().map(|m| m.group_id.clone().unwrap()).collect::<Vec<_>>(), vec!["C"]);
}

#[tokio::test]
async fn the_same_task_id_twice_is_one_message_and_delays_are_refused() {
    let (client, _) = setup(Arc::new(Mutex::new(Vec::new())));
    let queue = client.backend().queue("ordered").unwrap().queue.clone();
    let message = |body: &str| OutgoingMessage {
        group_id: Some("g".into()),
        deduplication_id: Some("task-1".into()),
        ..OutgoingMessage::new(body)
    };
    let first = queue.send(message("one")).await.unwrap();
    let second = queue.send(message("one again")).await.unwrap();
    assert_eq!(first, second, "deduplicated: the first message's id");
    let got = queue.receive(10, Duration::ZERO, Duration::from_secs(60)).await.unwrap();
    assert_eq!(got.len(), 1);
    queue.delete(&[got[0].receipt_handle.clone()]).await.unwrap();
    assert_eq!(queue.send(message("after delete")).await.unwrap(), first, "still within five minutes");

    let delayed = OutgoingMessage { delay: Duration::from_secs(5), ..message("later") };
    assert!(matches!(queue.send(delayed).await, Err(QueueError::Fifo { .. })));
    let no_group = OutgoingMessage { deduplication_id: Some("x".into()), ..OutgoingMessage::new("x") };
    assert!(matches!(queue.send(no_group).await, Err(QueueError::Fifo { .. })));

    let countdown = SendOptions { countdown: Some(chrono::Duration::seconds(10)), ..SendOptions::default() };
    let err = client.send("t.step", vec![json!("x"), json!(false)], Map::new(), countdown).await.unwrap_err();
    assert!(matches!(err, SendError::FifoDelay(_)), "{err}");
    assert!(err.to_string().contains("FIFO"));
}
