//! User tasks (`app.schedules.user_task`), on queue `default`: ported from the seed's
//! `user_task.py`. They talk to the Flask app's API at `APP_API_BASE`.
#![warn(missing_docs)]

mod api;

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use taskbeat::{Registry, TaskContext, TaskError};

pub use api::{ApiError, AppApi};

/// The task name of `process_users`.
pub const PROCESS_USERS: &str = "app.schedules.user_task.process_users";
/// The task name of `cleanup_inactive_users`.
pub const CLEANUP_INACTIVE_USERS: &str = "app.schedules.user_task.cleanup_inactive_users";

/// The actions `process_users` applies.
pub const ACTIONS: [&str; 3] = ["recompute", "activate", "deactivate"];

/// The module's tasks, configured from the environment (`APP_API_BASE`).
pub fn registry() -> Registry {
    registry_with(ApiSource::Env)
}

/// The module's tasks against the API at `base` (tests, tools).
pub fn registry_with_api_base(base: &str) -> Registry {
    registry_with(ApiSource::Base(base.to_owned()))
}

fn registry_with(source: ApiSource) -> Registry {
    let (process, cleanup) = (source.clone(), source);
    Registry::new("user")
        .task(PROCESS_USERS, &["user_ids", "action"], move |ctx, args| process_users(ctx, args, process.clone()))
        .task(CLEANUP_INACTIVE_USERS, &["days"], move |ctx, args| cleanup_inactive_users(ctx, args, cleanup.clone()))
}

/// Where the app's API settings come from.
#[derive(Debug, Clone)]
enum ApiSource {
    Env,
    Base(String),
}

// One HTTP client per process (cold start), built on first use.
fn api(source: &ApiSource) -> Result<AppApi, TaskError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(AppApi::http_client).clone();
    let api = match source {
        ApiSource::Env => AppApi::from_env(client),
        ApiSource::Base(base) => AppApi::new(client, base, std::time::Duration::from_secs(10)),
    };
    api.map_err(TaskError::from)
}

/// Arguments of `process_users(user_ids, action)`.
#[derive(Debug, Deserialize)]
pub struct ProcessUsers {
    /// The users to process.
    pub user_ids: Vec<String>,
    /// One of [`ACTIONS`].
    pub action: String,
}

/// A user that could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedUser {
    /// User id.
    pub id: String,
    /// Why.
    pub reason: String,
}

/// What `process_users` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSummary {
    /// Users processed.
    pub processed: usize,
    /// Users that were not.
    pub failed: Vec<FailedUser>,
}

/// For each user: fetch it, apply the action, post the outcome back; progress after each.
/// A missing user goes into `failed`; timeouts and 5xx make the whole task retryable.
async fn process_users(ctx: TaskContext, args: ProcessUsers, source: ApiSource) -> Result<ProcessSummary, TaskError> {
    if !ACTIONS.contains(&args.action.as_str()) {
        return Err(TaskError::permanent(
            "InvalidArguments",
            format!("unknown action `{}`: expected one of {}", args.action, ACTIONS.join(", ")),
        ));
    }
    let api = api(&source)?;
    let total = args.user_ids.len();
    let mut summary = ProcessSummary { processed: 0, failed: Vec::new() };
    for (done, id) in args.user_ids.iter().enumerate() {
        match process_one(&api, id, &args.action).await {
            Ok(()) => summary.processed += 1,
            Err(ApiError::NotFound(_)) => {
                summary.failed.push(FailedUser { id: id.clone(), reason: "user not found (404)".to_owned() })
            }
            Err(ApiError::Rejected { status, message }) => {
                summary.failed.push(FailedUser { id: id.clone(), reason: format!("rejected ({status}): {message}") })
            }
            Err(e) => return Err(e.into()),
        }
        let percent = ((done + 1) * 100 / total.max(1)) as u8;
        ctx.progress(percent, format!("processing users: {}/{total} ({})", done + 1, args.action)).await;
    }
    Ok(summary)
}

async fn process_one(api: &AppApi, id: &str, action: &str) -> Result<(), ApiError> {
    let user = api.get_json(&format!("users/{id}")).await?;
    let outcome = apply_action(&user, action);
    api.post_json(&format!("users/{id}/outcome"), &outcome).await?;
    Ok(())
}

/// The outcome of `action` on a user as the API returned it.
pub fn apply_action(user: &Value, action: &str) -> Value {
    match action {
        "recompute" => {
            // Profile completeness: the share of profile fields that are filled in.
            const FIELDS: [&str; 4] = ["name", "email", "avatar", "bio"];
            let filled = FIELDS
                .iter()
                .filter(|f| user.get(**f).and_then(Value::as_str).is_some_and(|v| !v.trim().is_empty()))
                .count();
            json!({ "action": action, "profile_completeness": filled * 100 / FIELDS.len() })
        }
        "activate" => json!({ "action": action, "active": true }),
        _ => json!({ "action": action, "active": false }),
    }
}

/// Arguments of `cleanup_inactive_users(days)`.
#[derive(Debug, Deserialize)]
pub struct CleanupInactive {
    /// Users inactive for at least this many days.
    pub days: u32,
}

/// What `cleanup_inactive_users` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupSummary {
    /// Users deactivated.
    pub deactivated: u64,
    /// Pages read.
    pub pages: u32,
}

#[derive(Debug, Deserialize)]
struct InactivePage {
    users: Vec<InactiveUser>,
    #[serde(default)]
    next_cursor: Option<String>,
    #[serde(default)]
    total: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct InactiveUser {
    id: Value,
}

/// Pages through the inactive users and deactivates each; progress per page.
async fn cleanup_inactive_users(
    ctx: TaskContext,
    args: CleanupInactive,
    source: ApiSource,
) -> Result<CleanupSummary, TaskError> {
    let api = api(&source)?;
    let mut summary = CleanupSummary { deactivated: 0, pages: 0 };
    let mut cursor: Option<String> = None;
    let mut seen: u64 = 0;
    loop {
        let mut query = vec![("days", args.days.to_string())];
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page: InactivePage = api.get_query("users/inactive", &query).await?;
        summary.pages += 1;
        for user in &page.users {
            seen += 1;
            let id = match &user.id {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match api
                .post_json(
                    &format!("users/{id}/deactivate"),
                    &json!({ "reason": format!("inactive for {} days", args.days) }),
                )
                .await
            {
                Ok(_) => summary.deactivated += 1,
                // Gone meanwhile: nothing to deactivate.
                Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let percent = match page.total {
            Some(total) if total > 0 => (seen * 100 / total).min(99) as u8,
            _ => 0,
        };
        ctx.progress(percent, format!("page {}: {} users deactivated", summary.pages, summary.deactivated)).await;
        match page.next_cursor.filter(|c| !c.is_empty()) {
            Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
            _ => break,
        }
    }
    // The last page's report said at most 99 %: say done, so meta and record agree.
    ctx.progress(100, format!("done: {} users deactivated in {} pages", summary.deactivated, summary.pages)).await;
    Ok(summary)
}
