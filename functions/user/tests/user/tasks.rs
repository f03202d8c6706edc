//! The user tasks, run end to end in memory through the batch handler.

use serde_json::{Map, json};
use taskbeat::TaskState;
use taskbeat::testing::run_task;
use taskbeat_e2e::fake_app;
use taskbeat_user::{CLEANUP_INACTIVE_USERS, PROCESS_USERS, registry, registry_with_api_base};

#[tokio::test]
async fn process_users_summarises_and_posts_outcomes() {
    let app = fake_app::spawn(fake_app::Options::default()).await;
    let run = run_task(
        registry_with_api_base(&app.base()),
        PROCESS_USERS,
        vec![json!(["u1", "missing-2", "u3"]), json!("recompute")],
        Map::new(),
    )
    .await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    assert_eq!(
        run.record.result,
        Some(json!({ "processed": 2, "failed": [{ "id": "missing-2", "reason": "user not found (404)" }] }))
    );
    assert_eq!(run.record.progress, 100);
    assert_eq!(run.record.status.as_deref(), Some("processing users: 3/3 (recompute)"));
    let calls = app.calls.lock().unwrap();
    assert_eq!(calls.outcomes.len(), 2);
    // name and email filled, bio empty, no avatar: half the profile.
    assert_eq!(calls.outcomes[0], ("u1".to_owned(), json!({ "action": "recompute", "profile_completeness": 50 })));
}

#[tokio::test]
async fn an_unavailable_app_makes_the_task_retry() {
    let app = fake_app::spawn(fake_app::Options::default()).await;
    let run = run_task(
        registry_with_api_base(&app.base()),
        PROCESS_USERS,
        vec![json!(["u1", "down-1"]), json!("activate")],
        Map::new(),
    )
    .await;
    assert_eq!(run.record.state, TaskState::Retry);
    assert_eq!(run.record.retries, 1);
    assert_eq!(run.record.error.as_ref().unwrap().kind, "AppUnavailable");
    assert_eq!(run.response.batch_item_failures.len(), 1, "handed back for redelivery");
}

#[tokio::test]
async fn an_unknown_action_fails_with_the_choices() {
    let app = fake_app::spawn(fake_app::Options::default()).await;
    let run =
        run_task(registry_with_api_base(&app.base()), PROCESS_USERS, vec![json!(["u1"]), json!("explode")], Map::new())
            .await;
    assert_eq!(run.record.state, TaskState::Failure);
    let error = run.record.error.unwrap();
    assert!(error.message.contains("explode") && error.message.contains("recompute"), "{}", error.message);
}

#[tokio::test]
async fn kwargs_work_like_celery() {
    let app = fake_app::spawn(fake_app::Options::default()).await;
    let kwargs = Map::from_iter([("action".to_owned(), json!("deactivate"))]);
    let run = run_task(registry_with_api_base(&app.base()), PROCESS_USERS, vec![json!(["u1"])], kwargs).await;
    assert_eq!(run.record.state, TaskState::Success);
}

#[tokio::test]
async fn cleanup_pages_through_inactive_users() {
    let inactive: Vec<String> = (1..=5).map(|i| format!("old{i}")).collect();
    let app =
        fake_app::spawn(fake_app::Options { inactive: inactive.clone(), page_size: 2, ..Default::default() }).await;
    let run = run_task(registry_with_api_base(&app.base()), CLEANUP_INACTIVE_USERS, vec![json!(90)], Map::new()).await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    assert_eq!(run.record.result, Some(json!({ "deactivated": 5, "pages": 3 })));
    assert_eq!(run.record.progress, 100);
    assert_eq!(run.record.meta.as_ref().unwrap()["progress"], json!(100), "meta agrees with the record");
    let calls = app.calls.lock().unwrap();
    assert_eq!(calls.deactivated, inactive);
    assert_eq!(calls.inactive_queries, vec![(90, None), (90, Some("2".to_owned())), (90, Some("4".to_owned()))]);
}

#[tokio::test]
async fn a_missing_setting_is_named() {
    // The test command unsets APP_API_BASE; registry() reads the environment.
    assert!(std::env::var("APP_API_BASE").is_err(), "run through scripts/test, which unsets APP_API_BASE");
    let run = run_task(registry(), CLEANUP_INACTIVE_USERS, vec![json!(30)], Map::new()).await;
    assert_eq!(run.record.state, TaskState::Failure);
    let error = run.record.error.unwrap();
    assert_eq!(error.kind, "MissingSetting");
    assert!(error.message.contains("APP_API_BASE"), "{}", error.message);
}
