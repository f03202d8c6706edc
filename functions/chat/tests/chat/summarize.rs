//! `summarize_conversation` against the stand-in: chunking on message boundaries, one call per
//! chunk and one to combine, usage summed, progress per chunk, failures.

use serde_json::{Map, Value, json};
use taskbeat::TaskState;
use taskbeat::testing::run_task;
use taskbeat_chat::{CHUNK_PROMPT, COMBINE_PROMPT, SUMMARIZE_CONVERSATION, Settings, registry_with};
use taskbeat_e2e::fake_openai::{self, FakeOpenAi, Options};

use crate::support::{MODEL, call, settings};

const KEY: &str = "sk-test-0123456789abcdef";

/// Six messages of 20 characters each.
fn conversation() -> Value {
    json!([
        { "role": "user", "content": "Can we ship friday??" },
        { "role": "assistant", "content": "Tests are still red." },
        { "role": "user", "content": "Which ones fail now?" },
        { "role": "assistant", "content": "The two retry tests." },
        { "role": "user", "content": "Fix them by thursday" },
        { "role": "assistant", "content": "OK, thursday it is. " },
    ])
}

async fn fake() -> FakeOpenAi {
    fake_openai::spawn(Options { api_key: KEY.to_owned(), ..Default::default() }).await
}

fn user_text(request: &Value) -> String {
    request["messages"][1]["content"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn chunks_are_summarized_then_combined() {
    let api = fake().await;
    let run = run_task(
        registry_with(settings(&api, KEY, &[])),
        SUMMARIZE_CONVERSATION,
        vec![conversation(), json!(45)],
        Map::new(),
    )
    .await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    let result = run.record.result.unwrap();
    // 45 characters hold two 20-character messages: three chunks, then one combining call.
    assert_eq!(result["chunks"], 3);
    assert_eq!(result["summary"], "summary #4 of 2 messages");
    assert_eq!(result["model"], MODEL);

    let requests = api.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 4);
    for (i, request) in requests[..3].iter().enumerate() {
        assert_eq!(request["messages"][0], json!({ "role": "system", "content": CHUNK_PROMPT }));
        let text = user_text(request);
        assert!(text.starts_with(&format!("Conversation excerpt (part {} of 3):", i + 1)), "{text}");
    }
    assert!(user_text(&requests[0]).ends_with("user: Can we ship friday??\n\nassistant: Tests are still red."));
    assert!(user_text(&requests[2]).contains("user: Fix them by thursday"));
    assert_eq!(requests[3]["messages"][0]["content"], COMBINE_PROMPT);
    assert_eq!(
        user_text(&requests[3]),
        "Partial summaries, in order:\n\n1. summary #1 of 2 messages\n\n2. summary #2 of 2 messages\n\n3. summary #3 of 2 messages"
    );

    // Usage is the sum of the four calls as the stand-in reports them.
    let mut expected = (0u64, 0u64);
    for (i, request) in requests.iter().enumerate() {
        let chars: usize = request["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().chars().count())
            .sum();
        expected.0 += chars.div_ceil(4) as u64;
        expected.1 += fake_openai::pieces(&format!("summary #{} of 2 messages", i + 1), 3).len() as u64;
    }
    assert_eq!(
        result["usage"],
        json!({ "prompt_tokens": expected.0, "completion_tokens": expected.1, "total_tokens": expected.0 + expected.1 })
    );
}

#[tokio::test]
async fn a_conversation_that_fits_one_chunk_takes_one_call() {
    let api = fake().await;
    let run =
        run_task(registry_with(settings(&api, KEY, &[])), SUMMARIZE_CONVERSATION, vec![conversation()], Map::new())
            .await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    let result = run.record.result.unwrap();
    assert_eq!((result["chunks"].clone(), result["summary"].clone()), (json!(1), json!("summary #1 of 2 messages")));
    let requests = api.requests.lock().unwrap();
    assert_eq!(requests.len(), 1, "default max_chunk_chars (4000) holds it all; no combining call");
    assert!(user_text(&requests[0]).starts_with("Conversation:\n\nuser: Can we ship friday??"));
}

#[tokio::test]
async fn a_message_longer_than_a_chunk_is_cut_on_character_boundaries() {
    let api = fake().await;
    let long = "データ".repeat(10); // 30 characters, 3 bytes each
    let messages = json!([{ "role": "user", "content": "hi" }, { "role": "assistant", "content": long }]);
    let run = run_task(
        registry_with(settings(&api, KEY, &[])),
        SUMMARIZE_CONVERSATION,
        vec![messages, json!(12)],
        Map::new(),
    )
    .await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    assert_eq!(run.record.result.unwrap()["chunks"], 4, "\"hi\", then 12 + 12 + 6 characters");
    let requests = api.requests.lock().unwrap();
    let pieces: Vec<String> =
        requests[1..4].iter().map(|r| user_text(r).rsplit_once("assistant: ").unwrap().1.to_owned()).collect();
    assert_eq!(pieces.concat(), long);
    assert!(pieces.iter().all(|p| p.chars().count() <= 12));
}

#[tokio::test]
async fn progress_is_reported_per_chunk() {
    let api = fake().await;
    let registry = registry_with(settings(&api, KEY, &[]));
    let (result, log) = call(&registry, SUMMARIZE_CONVERSATION, vec![conversation(), json!(45)]).await;
    assert_eq!(result.unwrap()["chunks"], 3);
    assert_eq!(
        log.statuses(),
        [
            "summarizing chunk 1/3",
            "summarizing chunk 2/3",
            "summarizing chunk 3/3",
            "combining 3 partial summaries",
            "summary complete: 3 chunks"
        ]
    );
    assert_eq!(log.percents(), [0, 25, 50, 75, 100]);
}

#[tokio::test]
async fn a_failing_chunk_fails_the_summary_the_way_the_api_failed() {
    let api = fake().await;
    let mut messages = conversation();
    messages[3]["content"] = json!("[status 503]");
    let run = run_task(
        registry_with(settings(&api, KEY, &[])),
        SUMMARIZE_CONVERSATION,
        vec![messages.clone(), json!(45)],
        Map::new(),
    )
    .await;
    assert_eq!(run.record.state, TaskState::Retry);
    assert_eq!(run.record.error.unwrap().kind, "ChatApiUnavailable");
    assert_eq!(api.requests.lock().unwrap().len(), 2, "stopped at the second chunk");

    messages[3]["content"] = json!("[status 400]");
    let run = run_task(
        registry_with(settings(&api, KEY, &[])),
        SUMMARIZE_CONVERSATION,
        vec![messages, json!(45)],
        Map::new(),
    )
    .await;
    assert_eq!(run.record.state, TaskState::Failure);
    let error = run.record.error.unwrap();
    assert!(error.message.contains("maximum context length"), "{}", error.message);
}

#[tokio::test]
async fn missing_settings_and_bad_arguments_are_named() {
    let run = run_task(
        registry_with(Settings::fixed([("CHAT_API_KEY", KEY)])),
        SUMMARIZE_CONVERSATION,
        vec![conversation()],
        Map::new(),
    )
    .await;
    let error = run.record.error.unwrap();
    assert_eq!(error.kind, "MissingSetting");
    assert!(
        error.message.contains("CHAT_API_BASE") && !error.message.contains("CHAT_API_KEY is not"),
        "{}",
        error.message
    );

    let api = fake().await;
    for (args, expected) in [
        (vec![conversation(), json!(0)], "`max_chunk_chars` is 0"),
        (vec![conversation(), json!(1)], "raise `max_chunk_chars`"),
        (vec![json!([])], "`messages` is empty"),
        (vec![conversation(), json!("big")], "max_chunk_chars"),
    ] {
        let run =
            run_task(registry_with(settings(&api, KEY, &[])), SUMMARIZE_CONVERSATION, args.clone(), Map::new()).await;
        let error = run.record.error.unwrap();
        assert_eq!(error.kind, "InvalidArguments", "{args:?}");
        assert!(error.message.contains(expected), "{args:?}: {}", error.message);
    }
    assert!(api.requests.lock().unwrap().is_empty());
}
