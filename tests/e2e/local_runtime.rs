//! The local runtime on the embedded store: the same handler as Lambda, fed from SQLite queues.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use taskbeat::backend::Backend;
use taskbeat::handler::{BatchHandler, HandlerOptions};
use taskbeat::local::{LocalWorker, Phase};
use taskbeat::manifest::Manifest;
use taskbeat::queue::{OutgoingMessage, REASON_ATTRIBUTE};
use taskbeat::record::TaskRecord;
use taskbeat::{Client, SendOptions, TaskState};
use taskbeat_e2e::{emulator, fake_app};
use tokio::sync::watch;
use tokio::time::Instant;

fn start(backend: &Backend, api_base: &str) -> (watch::Sender<Phase>, tokio::task::JoinHandle<()>) {
    let pair = backend.queue("default").unwrap();
    let handler = BatchHandler::new(
        Arc::new(taskbeat_user::registry_with_api_base(api_base)),
        backend.store.clone(),
        pair.dead_letters.clone(),
        "default",
        HandlerOptions::default(),
    );
    let worker = LocalWorker {
        module: "user".into(),
        queue: pair.queue.clone(),
        handler,
        batch_size: 10,
        concurrency: 2,
        timeout: Duration::from_secs(30),
        visibility_timeout: Duration::from_secs(180),
        arn: LocalWorker::local_arn("default"),
    };
    let (tx, rx) = watch::channel(Phase::Running);
    (tx, tokio::spawn(taskbeat::local::run(vec![worker], rx)))
}

async fn wait_terminal(backend: &Backend, id: uuid::Uuid) -> TaskRecord {
    let started = Instant::now();
    loop {
        if let Some(record) = backend.store.get(id).await.unwrap().filter(|r| r.state.is_terminal()) {
            return record;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "task {id} did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tasks_run_and_survive_a_restart() {
    let app = fake_app::spawn(fake_app::Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::parse(&emulator::user_manifest("local"), "test").unwrap();
    let backend = Backend::embedded(&manifest, dir.path()).unwrap();
    let (phase, runtime) = start(&backend, &app.base());
    let client = Client::new(Arc::new(manifest.clone()), backend.clone(), "e2e");
    let id = client
        .send(
            "app.schedules.user_task.process_users",
            vec![json!(["u1", "u2", "u3"]), json!("recompute")],
            Default::default(),
            SendOptions::default(),
        )
        .await
        .unwrap();
    let record = wait_terminal(&backend, id).await;
    assert_eq!(record.state, TaskState::Success);
    assert_eq!(record.result, Some(json!({ "processed": 3, "failed": [] })));
    assert_eq!(app.calls.lock().unwrap().outcomes.len(), 3);
    phase.send(Phase::Draining).unwrap();
    runtime.await.unwrap();
    drop((client, backend));

    let reopened = Backend::embedded(&manifest, dir.path()).unwrap();
    let again = reopened.store.get(id).await.unwrap().unwrap();
    assert_eq!(again, record);
}

#[tokio::test]
async fn garbage_neither_crashes_nor_delays_other_tasks() {
    let app = fake_app::spawn(fake_app::Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::parse(&emulator::user_manifest("local"), "test").unwrap();
    let backend = Backend::embedded(&manifest, dir.path()).unwrap();
    let pair = backend.queue("default").unwrap().clone();
    let garbage = [
        "not json at all".to_owned(),
        "{\"version\":1}".to_owned(),
        format!("{{\"version\":1,\"id\":\"{}\",\"task\":\"app.schedules.nope\"}}", uuid::Uuid::new_v4()),
        "[]".to_owned(),
        "\u{0}\u{1}binary-ish".to_owned(),
    ];
    for body in &garbage {
        pair.queue.send(OutgoingMessage::new(body.clone())).await.unwrap();
    }
    let client = Client::new(Arc::new(manifest.clone()), backend.clone(), "e2e");
    let id = client
        .send(
            "app.schedules.user_task.process_users",
            vec![json!(["u9"]), json!("activate")],
            Default::default(),
            SendOptions::default(),
        )
        .await
        .unwrap();
    let (phase, runtime) = start(&backend, &app.base());
    let started = Instant::now();
    assert_eq!(wait_terminal(&backend, id).await.state, TaskState::Success);
    assert!(started.elapsed() < Duration::from_secs(5), "the valid task was not held up");

    let mut dead = Vec::new();
    while dead.len() < garbage.len() && started.elapsed() < Duration::from_secs(10) {
        dead.extend(pair.dead_letters.receive(10, Duration::from_millis(200), Duration::from_secs(60)).await.unwrap());
    }
    assert_eq!(dead.len(), garbage.len());
    for message in &dead {
        assert!(garbage.contains(&message.body), "body kept as sent");
        assert!(!message.attributes[REASON_ATTRIBUTE].is_empty());
    }
    let depth = pair.queue.depth().await.unwrap();
    assert_eq!(depth.visible + depth.in_flight + depth.delayed, 0, "nothing left behind");
    phase.send(Phase::Draining).unwrap();
    runtime.await.unwrap();
}
