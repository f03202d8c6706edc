//! The registry: task name -> async handler with typed arguments.
//!
//! A task is registered with the names of its parameters, so a Celery-style call
//! (`args=[...]`, `kwargs={...}`) binds to a typed struct the way Python binds a call to a
//! function signature: positional args fill the parameters in order, kwargs by name.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::context::TaskContext;
use crate::record::ErrorInfo;

/// Retries a task gets by default (Celery's `max_retries`).
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// How a task failed, and whether running it again can help. The retry intent lives here,
/// in the error, not in flags around the task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// Running again will not help (bad input, a 404, a refused request).
    #[error("{}: {}", .0.kind, .0.message)]
    Permanent(ErrorInfo),
    /// A passing failure (timeout, 5xx, throttling): retry with backoff.
    #[error("{}: {}", .0.kind, .0.message)]
    Retryable(ErrorInfo),
    /// A passing failure with a known wait (a `Retry-After`).
    #[error("{}: {} (retry after {:?})", .0.kind, .0.message, .1)]
    RetryAfter(ErrorInfo, Duration),
    /// The task asked to run again (`ctx.retry`, Celery's `self.retry`).
    #[error("{}: {}", .info.kind, .info.message)]
    RetryRequested {
        /// Why.
        info: ErrorInfo,
        /// Wait this long first (default: the task's `retry_delay`).
        countdown: Option<Duration>,
        /// Retries allowed, instead of the task's `max_retries`.
        max_retries: Option<u32>,
    },
}

impl TaskError {
    /// A permanent failure of `kind`.
    pub fn permanent(kind: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError::Permanent(ErrorInfo::new(kind, message))
    }

    /// A retryable failure of `kind`.
    pub fn retryable(kind: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError::Retryable(ErrorInfo::new(kind, message))
    }

    /// A retryable failure to retry no sooner than `after`.
    pub fn retry_after(kind: impl Into<String>, message: impl Into<String>, after: Duration) -> Self {
        TaskError::RetryAfter(ErrorInfo::new(kind, message), after)
    }

    /// The error as recorded.
    pub fn info(&self) -> &ErrorInfo {
        match self {
            TaskError::Permanent(info)
            | TaskError::Retryable(info)
            | TaskError::RetryAfter(info, _)
            | TaskError::RetryRequested { info, .. } => info,
        }
    }

    /// Whether running again can help.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, TaskError::Permanent(_))
    }
}

type TaskFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>;
type HandlerFn = dyn Fn(TaskContext, Value) -> TaskFuture + Send + Sync;
type CheckFn = dyn Fn(Value) -> Result<(), TaskError> + Send + Sync;

/// Per-task settings (Celery's task options), with Celery's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOptions {
    /// Retries before a retryable failure becomes FAILURE (`max_retries`, 3).
    pub max_retries: u32,
    /// The longest one run may take; `None` uses the module's default.
    pub time_limit: Option<Duration>,
    /// The first retry's delay, doubled at each retry (`default_retry_delay`, 180 s).
    pub retry_delay: Duration,
    /// The longest backoff (`retry_backoff_max`, 600 s).
    pub retry_backoff_max: Duration,
    /// Randomize backoffs (full jitter, as Celery's `retry_jitter`).
    pub retry_jitter: bool,
    /// Error kinds retried even when permanent (`autoretry_for`).
    pub autoretry_for: &'static [&'static str],
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            max_retries: DEFAULT_MAX_RETRIES,
            time_limit: None,
            retry_delay: Duration::from_secs(180),
            retry_backoff_max: Duration::from_secs(600),
            retry_jitter: true,
            autoretry_for: &[],
        }
    }
}

impl TaskOptions {
    /// When `error` ends run number `retries + 1`: the delay before the next run, or `None`
    /// when it is not retried (permanent, or retries exhausted).
    pub fn retry_delay_for(&self, error: &TaskError, retries: u32) -> Option<Duration> {
        let (max_retries, delay) = match error {
            TaskError::Permanent(info) if !self.autoretry_for.contains(&info.kind.as_str()) => return None,
            TaskError::Permanent(_) | TaskError::Retryable(_) => (self.max_retries, self.backoff(retries)),
            TaskError::RetryAfter(_, after) => (self.max_retries, *after),
            TaskError::RetryRequested { countdown, max_retries, .. } => {
                (max_retries.unwrap_or(self.max_retries), countdown.unwrap_or(self.retry_delay))
            }
        };
        (retries < max_retries).then_some(delay)
    }

    /// Exponential backoff: `retry_delay * 2^retries`, capped, with full jitter.
    fn backoff(&self, retries: u32) -> Duration {
        let exponential = self.retry_delay.saturating_mul(2u32.saturating_pow(retries.min(31)));
        let capped = exponential.min(self.retry_backoff_max);
        if !self.retry_jitter {
            return capped;
        }
        let millis = u64::try_from(capped.as_millis()).unwrap_or(u64::MAX);
        // At least a second: a zero delay would retry in a hot loop.
        Duration::from_millis(fastrand::u64(0..=millis)).max(Duration::from_secs(1).min(capped))
    }
}

/// One registered task.
#[derive(Clone)]
pub struct TaskSpec {
    name: String,
    params: Vec<&'static str>,
    options: TaskOptions,
    handler: Arc<HandlerFn>,
    /// Decodes bound arguments into the task's argument type and drops them.
    check: Arc<CheckFn>,
}

impl fmt::Debug for TaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSpec").field("name", &self.name).field("params", &self.params).finish_non_exhaustive()
    }
}

impl TaskSpec {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its parameter names, in order.
    pub fn params(&self) -> &[&'static str] {
        &self.params
    }

    /// Its options.
    pub fn options(&self) -> TaskOptions {
        self.options
    }

    /// Whether a call with these arguments would bind and decode, without running anything:
    /// for producers that want to refuse a bad call before it is sent.
    pub fn check(&self, args: Vec<Value>, kwargs: Map<String, Value>) -> Result<(), TaskError> {
        (self.check)(bind_args(&self.name, &self.params, args, kwargs)?)
    }

    /// Binds the call's arguments and runs the task body.
    pub async fn call(
        &self,
        ctx: TaskContext,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<Value, TaskError> {
        let bound = bind_args(&self.name, &self.params, args, kwargs)?;
        (self.handler)(ctx, bound).await
    }
}

/// A module's tasks.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    module: String,
    tasks: BTreeMap<String, TaskSpec>,
}

impl Registry {
    /// An empty registry for `module` (the manifest's module name).
    pub fn new(module: impl Into<String>) -> Self {
        Registry { module: module.into(), tasks: BTreeMap::new() }
    }

    /// The module's name.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// Registers a task taking `A` (bound from `params`) and returning a serializable value.
    pub fn task<A, R, F, Fut>(self, name: &str, params: &[&'static str], body: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        self.task_with(name, params, TaskOptions::default(), body)
    }

    /// Registers a task with options.
    pub fn task_with<A, R, F, Fut>(mut self, name: &str, params: &[&'static str], options: TaskOptions, body: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(TaskContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, TaskError>> + Send + 'static,
    {
        let task_name = name.to_owned();
        let body = Arc::new(body);
        let handler: Arc<HandlerFn> = Arc::new(move |ctx: TaskContext, bound: Value| {
            let body = body.clone();
            let task_name = task_name.clone();
            Box::pin(async move {
                let args: A = decode_args(&task_name, bound)?;
                let value = body(ctx, args).await?;
                serde_json::to_value(value).map_err(|e| {
                    TaskError::permanent("UnserializableResult", format!("result cannot be stored as JSON: {e}"))
                })
            }) as TaskFuture
        });
        let task_name = name.to_owned();
        let check: Arc<CheckFn> = Arc::new(move |bound: Value| decode_args::<A>(&task_name, bound).map(drop));
        let spec = TaskSpec { name: name.to_owned(), params: params.to_vec(), options, handler, check };
        self.tasks.insert(name.to_owned(), spec);
        self
    }

    /// The task of that name.
    pub fn get(&self, name: &str) -> Option<&TaskSpec> {
        self.tasks.get(name)
    }

    /// Every task name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }
}

/// Decodes bound arguments into a task's argument type; an error names the argument.
fn decode_args<A: DeserializeOwned>(task: &str, bound: Value) -> Result<A, TaskError> {
    serde_path_to_error::deserialize(bound).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = if path == "." { String::new() } else { format!(" (argument `{path}`)") };
        TaskError::permanent("InvalidArguments", format!("invalid arguments for {task}{at}: {inner}"))
    })
}

/// Binds positional and keyword arguments to parameter names, as Python binds a call.
pub fn bind_args(
    task: &str,
    params: &[&str],
    args: Vec<Value>,
    kwargs: Map<String, Value>,
) -> Result<Value, TaskError> {
    if args.len() > params.len() {
        return Err(TaskError::permanent(
            "InvalidArguments",
            format!(
                "{task} takes {} positional arguments ({}) but {} were given",
                params.len(),
                params.join(", "),
                args.len()
            ),
        ));
    }
    let mut bound = Map::new();
    for (name, value) in params.iter().zip(args) {
        bound.insert((*name).to_owned(), value);
    }
    for (name, value) in kwargs {
        if bound.contains_key(&name) {
            return Err(TaskError::permanent(
                "InvalidArguments",
                format!("{task} got multiple values for argument `{name}`"),
            ));
        }
        if !params.contains(&name.as_str()) {
            return Err(TaskError::permanent(
                "InvalidArguments",
                format!("{task} got an unexpected keyword argument `{name}`; it takes {}", params.join(", ")),
            ));
        }
        bound.insert(name, value);
    }
    Ok(Value::Object(bound))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_is_checked_without_running_the_task() {
        #[derive(serde::Deserialize)]
        struct Args {
            #[allow(dead_code)]
            user_ids: Vec<String>,
            #[allow(dead_code)]
            action: String,
        }
        let registry = Registry::new("m")
            .task("t.users", &["user_ids", "action"], |_ctx, _args: Args| async { Ok::<_, TaskError>(json!(null)) });
        let spec = registry.get("t.users").unwrap();
        assert!(spec.check(vec![json!(["u1"]), json!("recompute")], Map::new()).is_ok());
        let missing = spec.check(vec![json!(["u1"])], Map::new()).unwrap_err();
        assert!(missing.info().message.contains("missing field `action`"), "{}", missing.info().message);
        let typed = spec.check(vec![json!("u1"), json!("recompute")], Map::new()).unwrap_err();
        assert!(typed.info().message.contains("argument `user_ids`"), "{}", typed.info().message);
        let extra = spec.check(vec![json!(["u1"]), json!("x"), json!(3)], Map::new()).unwrap_err();
        assert_eq!(extra.info().kind, "InvalidArguments");
    }

    #[test]
    fn retry_delays_follow_celery() {
        let fixed = TaskOptions { retry_jitter: false, ..TaskOptions::default() };
        let busy = TaskError::retryable("Upstream", "503");
        let delays: Vec<_> = (0..4).map(|n| fixed.retry_delay_for(&busy, n)).collect();
        assert_eq!(
            delays,
            vec![Some(Duration::from_secs(180)), Some(Duration::from_secs(360)), Some(Duration::from_secs(600)), None]
        );
        let jittered = TaskOptions::default();
        for n in 0..3 {
            let d = jittered.retry_delay_for(&busy, n).unwrap();
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(600), "{d:?}");
        }
        let after = TaskError::retry_after("RateLimited", "429", Duration::from_secs(7));
        assert_eq!(fixed.retry_delay_for(&after, 0), Some(Duration::from_secs(7)));
        let permanent = TaskError::permanent("BadInput", "no");
        assert_eq!(fixed.retry_delay_for(&permanent, 0), None);
        let auto = TaskOptions { autoretry_for: &["BadInput"], ..fixed };
        assert_eq!(auto.retry_delay_for(&permanent, 0), Some(Duration::from_secs(180)));
        let asked = TaskError::RetryRequested {
            info: ErrorInfo::new("Retry", "later"),
            countdown: Some(Duration::from_secs(5)),
            max_retries: Some(10),
        };
        assert_eq!(fixed.retry_delay_for(&asked, 9), Some(Duration::from_secs(5)));
        assert_eq!(fixed.retry_delay_for(&asked, 10), None);
    }

    #[test]
    fn binds_like_python() {
        let params = ["user_ids", "action"];
        let bound =
            bind_args("t", &params, vec![json!(["u1"])], Map::from_iter([("action".into(), json!("x"))])).unwrap();
        assert_eq!(bound, json!({"user_ids": ["u1"], "action": "x"}));
        let too_many = bind_args("t", &params, vec![json!(1), json!(2), json!(3)], Map::new()).unwrap_err();
        assert!(too_many.to_string().contains("takes 2 positional arguments"));
        let twice =
            bind_args("t", &params, vec![json!(1)], Map::from_iter([("user_ids".into(), json!(2))])).unwrap_err();
        assert!(twice.to_string().contains("multiple values for argument `user_ids`"));
        let unknown = bind_args("t", &params, vec![], Map::from_iter([("nope".into(), json!(2))])).unwrap_err();
        assert!(unknown.to_string().contains("unexpected keyword argument `nope`"));
    }
}
