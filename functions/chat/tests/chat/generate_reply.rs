//! `generate_reply` against the stand-in: the streamed reply, its options, progress, and each
//! class of failure.

use std::time::Duration;

use serde_json::{Map, Value, json};
use taskbeat::testing::run_task;
use taskbeat::{TaskError, TaskState};
use taskbeat_chat::{GENERATE_REPLY, Settings, registry_with};
use taskbeat_e2e::fake_openai::{self, FakeOpenAi, Options, Stream};

use crate::support::{MODEL, call, settings};

const KEY: &str = "sk-test-0123456789abcdef";
const REPLY: &str = "Bonjour! Ça va très bien — 日本語も話せます 🎉 (ok)";

fn conversation(last: &str) -> Value {
    json!([
        { "role": "system", "content": "You are terse." },
        { "role": "user", "content": last },
    ])
}

async fn fake(options: Options) -> FakeOpenAi {
    fake_openai::spawn(Options { api_key: KEY.to_owned(), ..options }).await
}

#[tokio::test]
async fn a_streamed_reply_comes_back_with_usage_and_model() {
    let api = fake(Options { reply: Some(REPLY.to_owned()), ..Default::default() }).await;
    let run =
        run_task(registry_with(settings(&api, KEY, &[])), GENERATE_REPLY, vec![conversation("Hi!")], Map::new()).await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    let pieces = fake_openai::pieces(REPLY, 3).len() as u64;
    assert_eq!(
        run.record.result,
        Some(json!({
            "reply": REPLY,
            "usage": { "prompt_tokens": 5, "completion_tokens": pieces, "total_tokens": 5 + pieces },
            "model": MODEL,
            "finish_reason": "stop",
        }))
    );
    assert_eq!(run.record.progress, 100);
    assert_eq!(run.record.status, Some(format!("reply complete: {pieces} tokens")));

    let request = api.requests.lock().unwrap()[0].clone();
    assert_eq!(request["model"], MODEL);
    assert_eq!(request["stream"], true);
    assert_eq!(request["stream_options"], json!({ "include_usage": true }));
    assert_eq!(request["messages"], conversation("Hi!"));
    assert!(request.get("temperature").is_none() && request.get("max_tokens").is_none(), "server defaults");
    assert_eq!(api.authorizations.lock().unwrap()[0], format!("Bearer {KEY}"));
}

#[tokio::test]
async fn chunks_cut_at_awkward_places_give_the_same_reply() {
    // 5-byte chunks split the `data:` prefix, the JSON, the blank lines between events, and
    // the two- three- and four-byte characters of the reply; the CRLF variant also splits
    // between \r and \n.
    for crlf in [false, true] {
        let options = Options { reply: Some(REPLY.to_owned()), chunk_bytes: Some(5), crlf, ..Default::default() };
        let stream = Stream {
            model: MODEL.to_owned(),
            reply: REPLY.to_owned(),
            max_tokens: None,
            include_usage: true,
            prompt_tokens: 5,
            cut: false,
            garbage: false,
        };
        let chunks = fake_openai::sse_chunks(&options, &stream);
        assert!(
            chunks.iter().any(|c| std::str::from_utf8(c).is_err()),
            "some chunk must end or start inside a multi-byte character"
        );
        let api = fake(options).await;
        let run =
            run_task(registry_with(settings(&api, KEY, &[])), GENERATE_REPLY, vec![conversation("Hi!")], Map::new())
                .await;
        assert_eq!(run.record.state, TaskState::Success, "crlf {crlf}: {:?}", run.record.error);
        let result = run.record.result.unwrap();
        assert_eq!(result["reply"], REPLY, "crlf {crlf}");
        assert_eq!(result["usage"]["completion_tokens"], fake_openai::pieces(REPLY, 3).len());
    }
}

#[tokio::test]
async fn options_override_model_temperature_and_max_tokens() {
    let api = fake(Options { reply: Some("one two three four five".to_owned()), ..Default::default() }).await;
    let options = json!({ "model": "gpt-other", "temperature": 0.2, "max_tokens": 4 });
    let run = run_task(
        registry_with(settings(&api, KEY, &[])),
        GENERATE_REPLY,
        vec![conversation("Count."), options],
        Map::new(),
    )
    .await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    let result = run.record.result.unwrap();
    assert_eq!(result["model"], "gpt-other");
    assert_eq!(result["reply"], "one two thre", "cut after 4 pieces");
    assert_eq!(result["finish_reason"], "length");
    let request = api.requests.lock().unwrap()[0].clone();
    assert_eq!((request["model"].clone(), request["temperature"].clone()), (json!("gpt-other"), json!(0.2)));
    assert_eq!(request["max_tokens"], 4);
}

#[tokio::test]
async fn progress_counts_tokens_and_never_shows_the_text() {
    let api = fake(Options { reply: Some(REPLY.to_owned()), ..Default::default() }).await;
    let registry = registry_with(settings(&api, KEY, &[]));
    let options = json!({ "max_tokens": 100 });
    let (result, log) = call(&registry, GENERATE_REPLY, vec![conversation("Hi!"), options]).await;
    assert_eq!(result.unwrap()["reply"], REPLY);
    let pieces = fake_openai::pieces(REPLY, 3).len();
    let mut expected = vec!["waiting for the model".to_owned()];
    expected.extend((1..=pieces).map(|n| format!("generating reply: {n} tokens")));
    expected.push(format!("reply complete: {pieces} tokens"));
    assert_eq!(log.statuses(), expected);
    let mut percents = vec![0];
    percents.extend((1..=pieces).map(|n| n as u8)); // n of max_tokens 100
    percents.push(100);
    assert_eq!(log.percents(), percents);
    let reported = format!("{:?}", log.updates.lock().unwrap());
    assert!(!reported.contains("Bonjour") && !reported.contains("🎉"), "{reported}");
}

#[tokio::test]
async fn an_overloaded_server_is_retried() {
    let api = fake(Options::default()).await;
    let run = run_task(
        registry_with(settings(&api, KEY, &[])),
        GENERATE_REPLY,
        vec![conversation("[status 503]")],
        Map::new(),
    )
    .await;
    assert_eq!(run.record.state, TaskState::Retry);
    let error = run.record.error.unwrap();
    assert_eq!(error.kind, "ChatApiUnavailable");
    assert!(error.message.contains("The server is overloaded") && error.message.contains("503"), "{}", error.message);
    assert_eq!(run.response.batch_item_failures.len(), 1, "handed back for redelivery");
}

#[tokio::test]
async fn a_rate_limit_is_retried_after_the_servers_wait() {
    let api = fake(Options::default()).await;
    let registry = registry_with(settings(&api, KEY, &[]));
    let (result, _) = call(&registry, GENERATE_REPLY, vec![conversation("[status 429]")]).await;
    match result {
        Err(TaskError::RetryAfter(info, after)) => {
            assert_eq!(after, Duration::from_secs(7));
            assert_eq!(info.kind, "ChatApiUnavailable");
            assert!(info.message.contains("Rate limit reached"), "{}", info.message);
        }
        other => panic!("expected a retry after 7 s, got {other:?}"),
    }
    let run = run_task(registry, GENERATE_REPLY, vec![conversation("[status 429]")], Map::new()).await;
    assert_eq!(run.record.state, TaskState::Retry);
}

#[tokio::test]
async fn a_spent_quota_and_a_bad_request_fail_with_the_apis_message() {
    let api = fake(Options::default()).await;
    for (marker, status, message) in [
        ("[quota]", 429, "You exceeded your current quota"),
        ("[status 400]", 400, "This model's maximum context length is 8192 tokens."),
    ] {
        let run =
            run_task(registry_with(settings(&api, KEY, &[])), GENERATE_REPLY, vec![conversation(marker)], Map::new())
                .await;
        assert_eq!(run.record.state, TaskState::Failure, "{marker}");
        let error = run.record.error.unwrap();
        assert_eq!(error.kind, "ChatApiRejected");
        assert!(error.message.contains(&format!("({status})")) && error.message.contains(message), "{}", error.message);
        assert!(run.response.batch_item_failures.is_empty(), "not handed back");
    }
}

#[tokio::test]
async fn a_wrong_key_fails_and_the_key_is_in_no_record() {
    let api = fake(Options::default()).await;
    let wrong = "sk-wrong-SECRET-9f8e7d6c5b4a";
    let run =
        run_task(registry_with(settings(&api, wrong, &[])), GENERATE_REPLY, vec![conversation("Hi!")], Map::new())
            .await;
    assert_eq!(run.record.state, TaskState::Failure);
    let error = run.record.error.clone().unwrap();
    assert_eq!(error.kind, "ChatApiRejected");
    assert!(
        error.message.contains("(401)") && error.message.contains("Incorrect API key provided"),
        "{}",
        error.message
    );
    // The stand-in quoted the key whole; it was sent, and redacted from what was recorded.
    assert_eq!(api.authorizations.lock().unwrap()[0], format!("Bearer {wrong}"));
    assert!(error.message.contains("[redacted]"), "{}", error.message);
    let record = serde_json::to_string(&run.record).unwrap();
    assert!(!record.contains("SECRET"), "the key leaked into the record: {record}");
}

#[tokio::test]
async fn a_stream_that_breaks_off_is_retried() {
    let api = fake(Options { reply: Some(REPLY.to_owned()), ..Default::default() }).await;
    let run =
        run_task(registry_with(settings(&api, KEY, &[])), GENERATE_REPLY, vec![conversation("[cut]")], Map::new())
            .await;
    assert_eq!(run.record.state, TaskState::Retry);
    let error = run.record.error.unwrap();
    assert_eq!(error.kind, "ChatStreamInterrupted");
    assert!(error.message.contains("after 2 tokens"), "{}", error.message);
}

#[tokio::test]
async fn a_chunk_that_is_not_json_fails() {
    let api = fake(Options::default()).await;
    let run =
        run_task(registry_with(settings(&api, KEY, &[])), GENERATE_REPLY, vec![conversation("[garbage]")], Map::new())
            .await;
    assert_eq!(run.record.state, TaskState::Failure);
    let error = run.record.error.unwrap();
    assert_eq!(error.kind, "ChatBadResponse");
    assert!(error.message.contains("not a chat completion chunk"), "{}", error.message);
}

#[tokio::test]
async fn a_silent_server_times_out_and_is_retried() {
    let api = fake(Options { chunk_delay: Duration::from_millis(1500), ..Default::default() }).await;
    let registry = registry_with(settings(&api, KEY, &[("CHAT_API_TIMEOUT_SECS", "0.3")]));
    let run = run_task(registry, GENERATE_REPLY, vec![conversation("Hi!")], Map::new()).await;
    assert_eq!(run.record.state, TaskState::Retry);
    let error = run.record.error.unwrap();
    assert!(error.message.contains("0.3 s"), "{}", error.message);
}

#[tokio::test]
async fn an_unreachable_server_is_retried() {
    // Bind then drop: a port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = Settings::fixed([
        ("CHAT_API_BASE", format!("http://127.0.0.1:{port}")),
        ("CHAT_API_KEY", KEY.to_owned()),
        ("CHAT_MODEL", MODEL.to_owned()),
    ]);
    let run = run_task(registry_with(settings), GENERATE_REPLY, vec![conversation("Hi!")], Map::new()).await;
    assert_eq!(run.record.state, TaskState::Retry);
    let error = run.record.error.unwrap();
    assert_eq!(error.kind, "ChatApiUnavailable");
    assert!(error.message.contains("connection failed"), "{}", error.message);
}

#[tokio::test]
async fn missing_settings_are_named() {
    let run = run_task(
        registry_with(Settings::fixed([("CHAT_MODEL", MODEL)])),
        GENERATE_REPLY,
        vec![conversation("Hi!")],
        Map::new(),
    )
    .await;
    assert_eq!(run.record.state, TaskState::Failure);
    let error = run.record.error.unwrap();
    assert_eq!(error.kind, "MissingSetting");
    assert!(error.message.contains("CHAT_API_BASE") && error.message.contains("CHAT_API_KEY"), "{}", error.message);

    let api = fake(Options::default()).await;
    let no_model = Settings::fixed([("CHAT_API_BASE", api.base()), ("CHAT_API_KEY", KEY.to_owned())]);
    let run = run_task(registry_with(no_model.clone()), GENERATE_REPLY, vec![conversation("Hi!")], Map::new()).await;
    let error = run.record.error.unwrap();
    assert_eq!(error.kind, "MissingSetting");
    assert!(error.message.contains("CHAT_MODEL"), "{}", error.message);
    // A model named in the options needs no CHAT_MODEL.
    let run = run_task(
        registry_with(no_model),
        GENERATE_REPLY,
        vec![conversation("Hi!"), json!({ "model": "gpt-named" })],
        Map::new(),
    )
    .await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    assert!(api.requests.lock().unwrap().len() == 1, "no request was made without settings");
}

#[tokio::test]
async fn bad_arguments_say_what_is_wrong() {
    let api = fake(Options::default()).await;
    let cases = [
        (vec![json!([])], "`messages` is empty"),
        (vec![json!([{ "role": "robot", "content": "x" }])], "messages[0].role"),
        (vec![json!([{ "role": "user" }])], "content"),
        (vec![conversation("Hi!"), json!({ "temprature": 1 })], "temprature"),
        (vec![conversation("Hi!"), json!({ "temperature": 3.5 })], "expected 0 to 2"),
        (vec![conversation("Hi!"), json!({ "max_tokens": 0 })], "max_tokens"),
    ];
    for (args, expected) in cases {
        let run = run_task(registry_with(settings(&api, KEY, &[])), GENERATE_REPLY, args.clone(), Map::new()).await;
        assert_eq!(run.record.state, TaskState::Failure, "{args:?}");
        let error = run.record.error.unwrap();
        assert_eq!(error.kind, "InvalidArguments", "{args:?}");
        assert!(error.message.contains(expected), "{args:?}: {}", error.message);
    }
    assert!(api.requests.lock().unwrap().is_empty());
}
