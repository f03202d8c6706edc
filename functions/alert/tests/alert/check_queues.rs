//! `check_queues` over every queue of the real manifest, with messages planted in queues and
//! dead-letter queues.

use std::time::Duration;

use serde_json::json;
use taskbeat::TaskState;
use taskbeat::queue::OutgoingMessage;
use taskbeat_alert::{AlertSettings, CHECK_QUEUES, QueueAlert, QueuesReport, SEND_ALERT, registry_with};

use crate::rig::{Rig, envelope};

fn rig() -> Rig {
    // check_queues never posts itself; its child would, to this (unused) address.
    Rig::new(registry_with(AlertSettings::new("http://127.0.0.1:9/hook").unwrap()))
}

async fn plant(rig: &Rig, queue: &str, dead: bool, count: usize, delay: Duration) {
    let pair = rig.backend.queue(queue).unwrap();
    let target = if dead { &pair.dead_letters } else { &pair.queue };
    for i in 0..count {
        target.send(OutgoingMessage { body: format!("message {i}"), delay, ..Default::default() }).await.unwrap();
    }
}

fn report(record: &taskbeat::record::TaskRecord) -> QueuesReport {
    assert_eq!(record.state, TaskState::Success, "{:?}", record.error);
    serde_json::from_value(record.result.clone().unwrap()).unwrap()
}

#[tokio::test]
async fn dead_letters_and_backlogs_raise_one_alert() {
    let rig = rig();
    plant(&rig, "chat", true, 2, Duration::ZERO).await;
    plant(&rig, "default", false, 3, Duration::ZERO).await;
    plant(&rig, "default", false, 1, Duration::from_secs(60)).await;
    plant(&rig, "nft", false, 4, Duration::ZERO).await;
    // One nft message is being worked on: in flight, not backlog.
    let taken = rig.backend.queue("nft").unwrap().queue.receive(1, Duration::ZERO, Duration::from_secs(60)).await;
    assert_eq!(taken.unwrap().len(), 1);

    let call = envelope(CHECK_QUEUES, json!({ "max_backlog": 3 }));
    let record = rig.run(&call).await;
    let result = report(&record);
    assert_eq!(result.max_backlog, 3);
    let names: Vec<&str> = result.queues.iter().map(|q| q.queue.as_str()).collect();
    assert_eq!(names, rig.client.manifest().queue_names(), "every queue of the manifest, by name");
    // (queue, visible, in flight, delayed, backlog, dead letters, alerts)
    type Row<'a> = (&'a str, u64, u64, u64, u64, u64, Vec<QueueAlert>);
    let rows: Vec<Row> = result
        .queues
        .iter()
        .filter(|q| ["alerts", "chat", "default", "nft"].contains(&q.queue.as_str()))
        .map(|q| (q.queue.as_str(), q.visible, q.in_flight, q.delayed, q.backlog, q.dead_letters, q.alerts.clone()))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("alerts", 0, 0, 0, 0, 0, vec![]),
            ("chat", 0, 0, 0, 0, 2, vec![QueueAlert::DeadLetters]),
            ("default", 3, 0, 1, 4, 0, vec![QueueAlert::Backlog]),
            ("nft", 3, 1, 0, 3, 0, vec![]),
        ]
    );
    let mut others = result.queues.iter().filter(|q| !["chat", "default"].contains(&q.queue.as_str()));
    assert!(others.all(|q| q.alerts.is_empty()), "{:?}", result.queues);
    let total = result.queues.len();
    assert_eq!(record.status, Some(format!("checked {total}/{total} queues")));
    let raw = record.result.as_ref().unwrap();
    let chat = raw["queues"].as_array().unwrap().iter().find(|q| q["queue"] == "chat").unwrap();
    assert_eq!(chat["alerts"], json!(["dead_letters"]), "alerts read as words in the record");

    let alert_id = result.alert_task_id.expect("an alert was sent");
    let queued = rig.take_queued("alerts").await;
    assert_eq!(queued.len(), 1);
    let child = &queued[0];
    assert_eq!((child.id, child.task.as_str()), (alert_id, SEND_ALERT));
    assert_eq!((child.parent_id, child.root_id), (Some(call.id), Some(call.id)));
    assert_eq!(child.kwargs["level"], json!("error"));
    assert_eq!(child.kwargs["title"], json!("Queue check: chat, default need attention"));
    assert_eq!(child.kwargs["dedup_key"], json!("queues:chat:dead_letters,default:backlog"));
    assert_eq!(
        child.kwargs["text"],
        json!(
            "- chat: 2 message(s) in its dead-letter queue; inspect them and send them back once fixed\n\
             - default: backlog 4 (visible 3 + delayed 1) over 3; 0 in flight"
        )
    );
    assert_eq!(rig.record(alert_id).await.parent_id, Some(call.id));
}

#[tokio::test]
async fn a_backlog_alone_is_a_warning() {
    let rig = rig();
    plant(&rig, "chat", false, 2, Duration::ZERO).await;
    let result = report(&rig.run(&envelope(CHECK_QUEUES, json!({ "max_backlog": 1 }))).await);
    let child = rig.take_queued("alerts").await.pop().unwrap();
    assert_eq!(Some(child.id), result.alert_task_id);
    assert_eq!(child.kwargs["level"], json!("warning"));
    assert_eq!(child.kwargs["dedup_key"], json!("queues:chat:backlog"));
}

#[tokio::test]
async fn quiet_queues_raise_nothing() {
    let rig = rig();
    plant(&rig, "default", false, 5, Duration::ZERO).await;
    // No argument: the default limit (1000) is far above five.
    let result = report(&rig.run(&taskbeat::Envelope::new(CHECK_QUEUES, vec![], Default::default())).await);
    assert_eq!(result.max_backlog, 1000);
    assert_eq!(result.alert_task_id, None);
    assert!(result.queues.iter().all(|q| q.alerts.is_empty()));
    assert_eq!(result.queues.iter().find(|q| q.queue == "default").unwrap().backlog, 5);
    assert!(rig.take_queued("alerts").await.is_empty());
}

#[tokio::test]
async fn it_reads_whatever_queues_the_manifest_has() {
    // taskbeat::testing::run_task's manifest has a single queue, `test`.
    let run = taskbeat::testing::run_task(
        registry_with(AlertSettings::default()),
        CHECK_QUEUES,
        vec![json!(10)],
        Default::default(),
    )
    .await;
    let result: QueuesReport = serde_json::from_value(run.record.result.unwrap()).unwrap();
    assert_eq!(result.queues.len(), 1);
    assert_eq!(result.queues[0].queue, "test");
}
