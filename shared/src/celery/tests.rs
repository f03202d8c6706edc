use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::*;
use crate::queue::REASON_ATTRIBUTE;
use crate::registry::Registry;
use crate::state::TaskState;
use crate::testing::run_bodies;
use crate::{TaskContext, TaskError};

/// What kombu 5.7's SQS transport put on the queue for Celery 5.7's
/// `send_task("app.schedules.user_task.process_users", args=[["u1", "u2"], "recompute"],
/// task_id=..., time_limit=30, soft_time_limit=20)`.
const REAL_BODY: &str = include_str!("fixtures/send_task-celery-5.7.b64");

fn b64(text: &str) -> String {
    STANDARD.encode(text)
}

/// A kombu envelope around `[args, kwargs, embed]`, as the SQS transport writes it.
fn kombu(headers: Value, args: Value, kwargs: Value) -> Value {
    let inner = json!([args, kwargs, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
    json!({
        "body": b64(&inner.to_string()),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {"correlation_id": headers["id"], "delivery_info": {"exchange": "", "routing_key": "default"},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": Uuid::new_v4().to_string()},
    })
}

fn headers(task: &str, id: Uuid) -> Value {
    json!({"lang": "py", "task": task, "id": id.to_string(), "shadow": null, "eta": null, "expires": null,
           "group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": id.to_string(),
           "parent_id": null, "argsrepr": "[...]", "kwargsrepr": "{}", "origin": "gen1@web", "ignore_result": false})
}

fn celery(body: &str) -> CeleryMessage {
    match decode(body) {
        Ok(Incoming::Celery(message)) => message,
        other => panic!("not a Celery message: {other:?}"),
    }
}

fn refused(body: &str) -> String {
    match decode(body) {
        Err(e) => e.to_string(),
        Ok(ok) => panic!("accepted: {ok:?}"),
    }
}

#[test]
fn reads_what_celery_sends_over_sqs() {
    let message = celery(REAL_BODY);
    let envelope = &message.envelope;
    assert_eq!(envelope.task, "app.schedules.user_task.process_users");
    assert_eq!(envelope.id, Uuid::parse_str("0b8f1a52-3c7e-4d39-9a6e-2f1f0c8d7e11").unwrap());
    assert_eq!(envelope.args, vec![json!(["u1", "u2"]), json!("recompute")]);
    assert!(envelope.kwargs.is_empty());
    assert_eq!((envelope.retries, envelope.eta, envelope.expires), (0, None, None));
    assert_eq!(envelope.root_id, Some(envelope.id));
    assert_eq!(message.time_limit, (Some(Duration::from_secs(30)), Some(Duration::from_secs(20))));
    assert_eq!(decode(REAL_BODY).unwrap().time_limit(), Some(Duration::from_secs(30)));

    // The transport's sqs_base64_encoding off: the same envelope as plain JSON.
    let plain = String::from_utf8(STANDARD.decode(REAL_BODY).unwrap()).unwrap();
    assert_eq!(celery(&plain), message);
}

#[test]
fn taskbeat_envelopes_come_first() {
    let envelope = crate::Envelope::new("t.x", vec![json!(1)], Default::default());
    assert_eq!(decode(&envelope.to_body()).unwrap(), Incoming::Taskbeat(envelope));
    assert!(matches!(decode("not json"), Err(IncomingError::Envelope(crate::envelope::EnvelopeError::NotJson(_)))));
    assert!(matches!(decode(""), Err(IncomingError::Envelope(crate::envelope::EnvelopeError::Empty))));
}

#[test]
fn headers_carry_retries_times_and_lineage_and_args_come_from_the_body() {
    let id = Uuid::new_v4();
    let parent = Uuid::new_v4();
    let mut h = headers("t.x", id);
    h["retries"] = json!(3);
    h["eta"] = json!("2026-12-03T10:00:05.123456+00:00");
    h["expires"] = json!("2026-12-03T11:00:00");
    h["parent_id"] = json!(parent.to_string());
    h["group"] = json!("g-1");
    h["argsrepr"] = json!("['truncated...");
    let message = celery(&b64(&kombu(h, json!([["a", "b"], 7]), json!({"mode": "x"})).to_string()));
    let e = &message.envelope;
    assert_eq!(e.retries, 3);
    assert_eq!(e.eta.unwrap().to_rfc3339(), "2026-12-03T10:00:05.123456+00:00");
    assert_eq!(e.expires.unwrap().to_rfc3339(), "2026-12-03T11:00:00+00:00");
    assert_eq!((e.parent_id, e.root_id), (Some(parent), Some(id)));
    assert_eq!(e.args, vec![json!(["a", "b"]), json!(7)]);
    assert_eq!(e.kwargs["mode"], "x");
    assert_eq!(message.group.as_deref(), Some("g-1"));
}

#[test]
fn refusals_name_the_celery_setting_to_change() {
    let id = Uuid::new_v4();
    let good = kombu(headers("t.x", id), json!([]), json!({}));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        b64(&v.to_string())
    };
    let pickle = refused(&with(&|v| {
        v["content-type"] = json!("application/x-python-serialize");
        v["content-encoding"] = json!("binary");
    }));
    assert!(pickle.contains("task_serializer = 'json'") && pickle.contains("accept_content"), "{pickle}");
    for other in ["application/x-yaml", "application/x-msgpack"] {
        let err = refused(&with(&|v| v["content-type"] = json!(other)));
        assert!(err.contains(other) && err.contains("task_serializer"), "{err}");
    }
    let encoding = refused(&with(&|v| v["content-encoding"] = json!("latin-1")));
    assert!(encoding.contains("latin-1") && encoding.contains("task_serializer"), "{encoding}");
    let compressed = refused(&with(&|v| v["headers"]["compression"] = json!("application/x-gzip")));
    assert!(compressed.contains("task_compression"), "{compressed}");

    // Protocol 1: task, id and args in the body, no task header.
    let v1 = json!({"task": "t.x", "id": id.to_string(), "args": [], "kwargs": {}, "retries": 0, "eta": null});
    let protocol1 = refused(&with(&|v| {
        v["headers"] = json!({});
        v["body"] = json!(b64(&v1.to_string()));
    }));
    assert!(protocol1.contains("task_protocol = 2"), "{protocol1}");

    let canvas = refused(&with(&|v| {
        let inner = json!([[], {}, {"callbacks": [{"task": "t.y"}], "errbacks": null, "chain": null, "chord": null}]);
        v["body"] = json!(b64(&inner.to_string()));
    }));
    assert!(canvas.contains("`link`") && canvas.contains("canvas"), "{canvas}");

    let custom_id = refused(&with(&|v| v["headers"]["id"] = json!("my-own-id")));
    assert!(custom_id.contains("`id`") && custom_id.contains("task_id="), "{custom_id}");
    let encoding = refused(&with(&|v| v["properties"]["body_encoding"] = json!("hex")));
    assert!(encoding.contains("body_encoding `hex`"), "{encoding}");
}

#[test]
fn salvages_the_id_of_a_broken_celery_message() {
    let id = Uuid::new_v4();
    let mut v = kombu(headers("t.x", id), json!([]), json!({}));
    v["content-type"] = json!("application/x-python-serialize");
    let body = b64(&v.to_string());
    assert!(decode(&body).is_err());
    assert_eq!(salvage_id(&body), Some((id, Some("t.x".to_owned()))));
    assert_eq!(salvage_id(&v.to_string()), Some((id, Some("t.x".to_owned()))));
    assert_eq!(salvage_id("bm90IGpzb24="), None);
}

#[derive(Debug, Deserialize)]
struct EchoArgs {
    items: Vec<String>,
    mode: String,
}

fn echo_registry() -> Registry {
    Registry::new("test").task("t.echo", &["items", "mode"], |_ctx: TaskContext, a: EchoArgs| async move {
        Ok::<_, TaskError>(json!({ "count": a.items.len(), "mode": a.mode }))
    })
}

/// A Celery task that asks for a retry is handed back to be delivered again: same message,
/// same task id, its record RETRY. A Celery time limit replaces the task's own.
#[tokio::test]
async fn a_celery_task_retries_under_its_id_and_its_time_limit() {
    let registry = Registry::new("test")
        .task("t.flaky", &[], |_ctx: TaskContext, _: Value| async move {
            Err::<u8, _>(TaskError::retryable("Upstream", "503 from the app"))
        })
        .task("t.slow", &[], |_ctx: TaskContext, _: Value| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, TaskError>(0)
        });
    let (flaky, slow) = (Uuid::new_v4(), Uuid::new_v4());
    let mut limited = headers("t.slow", slow);
    limited["timelimit"] = json!([0.2, null]);
    let bodies = [
        b64(&kombu(headers("t.flaky", flaky), json!([]), json!({})).to_string()),
        b64(&kombu(limited, json!([]), json!({})).to_string()),
    ];
    let (response, store, _) = run_bodies(registry, &bodies).await;
    let handed_back: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    assert_eq!(handed_back, vec!["m0"]);
    let record = store.get(flaky).await.unwrap().unwrap();
    assert_eq!((record.state, record.retries), (TaskState::Retry, 1));
    let record = store.get(slow).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Failure);
    assert_eq!(record.error.unwrap().kind, "TimeLimitExceeded");
}

/// The ways a generated body is broken, each with what its reason must say.
const CORRUPTIONS: [(&str, &str); 10] = [
    ("truncated base64", "not JSON"),
    ("base64 of non-JSON", "decodes to text that is not JSON"),
    ("base64 of non-UTF-8", "not UTF-8"),
    ("bad inner JSON", "Celery message body: not JSON"),
    ("inner body not base64", "not base64"),
    ("unknown body encoding", "body_encoding"),
    ("missing task header", "header `task`"),
    ("missing id header", "header `id`"),
    ("pickle", "task_serializer"),
    ("args not a list", "args is"),
];

/// A round of generated kombu-style bodies, valid and broken, in one batch through the real
/// handler: the valid ones run, every broken one is dead-lettered with its reason, and nothing
/// crashes.
#[tokio::test]
async fn a_round_of_generated_bodies_runs_the_valid_and_dead_letters_the_rest() {
    // The round's logs go nowhere, through a subscriber of its own: tracing caches per call
    // site, process-wide, whether anyone listens, and a site first reached here with no
    // subscriber at all could be cached as silent while the log tests of this binary run.
    let _logs = tracing::subscriber::set_default(
        tracing_subscriber::fmt().with_writer(std::io::sink).with_max_level(tracing::Level::DEBUG).finish(),
    );
    let mut rng = fastrand::Rng::with_seed(0x6365_6c65_7279);
    let mut bodies = Vec::new();
    let mut valid: BTreeMap<Uuid, (usize, String)> = BTreeMap::new();
    let mut broken: BTreeMap<String, &str> = BTreeMap::new();
    for n in 0..1000 {
        let id = Uuid::new_v4();
        let items: Vec<String> = (0..rng.usize(0..5)).map(|i| format!("u{i}-{}", rng.u32(..))).collect();
        let mode = ["recompute", "activate", "ünïcode \"quoted\""][rng.usize(0..3)].to_owned();
        let as_kwargs = rng.bool();
        let (args, kwargs) = if as_kwargs {
            (json!([]), json!({"items": items, "mode": mode}))
        } else {
            (json!([items, mode]), json!({}))
        };
        let mut h = headers("t.echo", id);
        if rng.bool() {
            h["retries"] = json!(rng.u32(0..3));
        }
        if rng.bool() {
            h["expires"] = json!((chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339());
        }
        let envelope = kombu(h, args, kwargs);
        if n % 2 == 0 {
            let body = if rng.bool() { b64(&envelope.to_string()) } else { envelope.to_string() };
            valid.insert(id, (items.len(), mode));
            bodies.push(body);
            continue;
        }
        let (what, _) = CORRUPTIONS[(n / 2) % CORRUPTIONS.len()];
        let mut v = envelope.clone();
        let body = match what {
            "truncated base64" => {
                let text = b64(&v.to_string());
                text[..text.len() - 1 - rng.usize(0..3)].to_owned()
            }
            "base64 of non-JSON" => b64(&format!("{{\"body\": \"{}", rng.u64(..))),
            "base64 of non-UTF-8" => STANDARD.encode([&[0xff, 0xfe][..], &(n as u32).to_be_bytes()[..]].concat()),
            "bad inner JSON" => {
                v["body"] = json!(b64("[[\"u1\"], {\"mode\": "));
                b64(&v.to_string())
            }
            "inner body not base64" => {
                v["body"] = json!("[[], {}, {}]!");
                b64(&v.to_string())
            }
            "unknown body encoding" => {
                v["properties"]["body_encoding"] = json!(["gzip", "hex", "binary"][rng.usize(0..3)]);
                b64(&v.to_string())
            }
            "missing task header" => {
                v["headers"].as_object_mut().unwrap().remove("task");
                b64(&v.to_string())
            }
            "missing id header" => {
                v["headers"].as_object_mut().unwrap().remove("id");
                v.to_string()
            }
            "pickle" => {
                v["content-type"] = json!("application/x-python-serialize");
                b64(&v.to_string())
            }
            "args not a list" => {
                let inner = json!([{"items": []}, {}, {}]);
                v["body"] = json!(b64(&inner.to_string()));
                b64(&v.to_string())
            }
            _ => unreachable!("every corruption is generated"),
        };
        broken.insert(body.clone(), what);
        bodies.push(body);
    }
    assert_eq!((valid.len(), broken.len()), (500, 500));

    let (response, store, dlq) = run_bodies(echo_registry(), &bodies).await;
    assert!(response.batch_item_failures.is_empty(), "{:?}", response.batch_item_failures);
    for (id, (count, mode)) in &valid {
        let record = store.get(*id).await.unwrap().unwrap_or_else(|| panic!("task {id} did not run"));
        assert_eq!(record.state, TaskState::Success, "{record:?}");
        assert_eq!(record.result, Some(json!({"count": count, "mode": mode})));
    }
    let mut dead = 0;
    loop {
        let batch = dlq.receive(10, Duration::ZERO, Duration::from_secs(60)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for message in batch {
            let what = broken.get(&message.body).unwrap_or_else(|| panic!("not a broken body: {}", message.body));
            let expected = CORRUPTIONS.iter().find(|(w, _)| w == what).unwrap().1;
            let reason = &message.attributes[REASON_ATTRIBUTE];
            assert!(reason.starts_with("malformed message: ") && reason.contains(expected), "{what}: {reason}");
            dead += 1;
        }
    }
    assert_eq!(dead, broken.len());
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Any JSON value a header could hold.
    fn json_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,40}".prop_map(Value::from),
            prop::collection::vec(any::<i32>().prop_map(Value::from), 0..3).prop_map(Value::Array),
            Just(json!({"a": 1})),
        ]
    }

    const HEADERS: [&str; 11] = [
        "task",
        "id",
        "retries",
        "eta",
        "expires",
        "timelimit",
        "root_id",
        "parent_id",
        "group",
        "origin",
        "compression",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any text: an error or a message, never a panic.
        #[test]
        fn any_body_is_decoded_or_refused(body in ".{0,300}") {
            let _ = decode(&body);
            let _ = salvage_id(&body);
        }

        /// A real Celery body with one character replaced: an error or a message, never a panic.
        #[test]
        fn a_corrupted_real_body_is_decoded_or_refused(at in 0usize..REAL_BODY.len(), c in any::<char>()) {
            let mut body: Vec<char> = REAL_BODY.chars().collect();
            body[at] = c;
            let body: String = body.into_iter().collect();
            let _ = decode(&body);
            let plain = String::from_utf8(STANDARD.decode(REAL_BODY).unwrap()).unwrap();
            let mut plain: Vec<char> = plain.chars().collect();
            let at = at % plain.len();
            plain[at] = c;
            let _ = decode(&plain.into_iter().collect::<String>());
        }

        /// Any value in any header: a message whose task and id are the headers', or an error
        /// naming what is wrong.
        #[test]
        fn any_header_value_is_read_or_refused(name in prop::sample::select(&HEADERS[..]), value in json_value()) {
            let id = Uuid::new_v4();
            let mut h = headers("t.x", id);
            h[name] = value.clone();
            match decode(&b64(&kombu(h, json!([1]), json!({})).to_string())) {
                Ok(Incoming::Celery(message)) => {
                    let task = if name == "task" { value.as_str().unwrap_or_default() } else { "t.x" };
                    prop_assert_eq!(message.envelope.task.as_str(), task);
                    let want = if name == "id" { value.as_str().and_then(|v| Uuid::parse_str(v).ok()) } else { Some(id) };
                    prop_assert_eq!(Some(message.envelope.id), want);
                }
                Ok(other) => prop_assert!(false, "not a Celery message: {:?}", other),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
