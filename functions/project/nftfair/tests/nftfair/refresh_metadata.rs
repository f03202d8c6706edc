//! `refresh_metadata` against the stand-in: every URI form, every way a token can be invalid,
//! the 5xx/timeout policy, bounded concurrency, progress and settings.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use taskbeat::TaskState;
use taskbeat::testing::run_task;
use taskbeat_e2e::fake_nft::{self, Doc, FakeNft};
use taskbeat_nftfair::{REFRESH_METADATA, Settings, registry_with};

use crate::support::{call, settings};

fn docs(entries: Vec<(&str, Doc)>) -> BTreeMap<String, Doc> {
    entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn valid(name: &str) -> Value {
    fake_nft::token(name, &[("Hat", json!("Cap")), ("Level", json!(3))])
}

async fn refresh(host: &FakeNft, uris: &[String], extra: &[(&str, &str)]) -> taskbeat::testing::Run {
    run_task(registry_with(settings(host, extra)), REFRESH_METADATA, vec![json!(uris)], Map::new()).await
}

#[tokio::test]
async fn every_uri_form_is_fetched_and_checked() {
    let host = fake_nft::spawn(docs(vec![
        ("meta/1", Doc::Json(valid("One"))),
        ("ipfs/QmCid2/2.json", Doc::Json(valid("Two"))),
        ("ipfs/QmCid3/3", Doc::Text(valid("Three").to_string())),
    ]))
    .await;
    let four = valid("Four 🎉").to_string();
    let uris = vec![
        format!("{}/meta/1", host.base()),
        "ipfs://QmCid2/2.json".to_owned(),
        "ipfs://ipfs/QmCid3/3".to_owned(),
        format!("data:application/json;base64,{}", STANDARD.encode(four.as_bytes())),
        format!("data:application/json,{}", percent_encode(&four)),
    ];
    let run = refresh(&host, &uris, &[]).await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    assert_eq!(run.record.result, Some(json!({ "ok": 5, "invalid": [] })));
    assert_eq!((host.hits("meta/1"), host.hits("ipfs/QmCid2/2.json"), host.hits("ipfs/QmCid3/3")), (1, 1, 1));
}

#[tokio::test]
async fn invalid_tokens_are_listed_with_their_reasons_in_order() {
    let mut no_name = valid("x");
    no_name.as_object_mut().unwrap().remove("name");
    let mut bad_attributes = valid("y");
    bad_attributes["attributes"] = json!([{ "trait_type": "Hat", "value": "Cap" }, { "value": "Blue" }]);
    let host = fake_nft::spawn(docs(vec![
        ("ok", Doc::Json(valid("Fine"))),
        ("gone", Doc::Status(404)),
        ("forbidden", Doc::Status(403)),
        ("html", Doc::Text("<html>not json</html>".into())),
        ("no-name", Doc::Json(no_name)),
        ("bad-attributes", Doc::Json(bad_attributes)),
        ("array", Doc::Json(json!([1, 2]))),
    ]))
    .await;
    let at = |path: &str| format!("{}/{path}", host.base());
    let uris = vec![
        at("ok"),
        at("gone"),
        at("forbidden"),
        at("html"),
        at("no-name"),
        at("bad-attributes"),
        at("array"),
        "ar://abcdef".to_owned(),
        "data:text/plain,hello".to_owned(),
        "ipfs://".to_owned(),
    ];
    let run = refresh(&host, &uris, &[]).await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    let result = run.record.result.unwrap();
    assert_eq!(result["ok"], 1);
    let reasons: Vec<(String, String)> = result["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["uri"].as_str().unwrap().to_owned(), t["reason"].as_str().unwrap().to_owned()))
        .collect();
    let expected = [
        (at("gone"), "HTTP 404 Not Found"),
        (at("forbidden"), "HTTP 403 Forbidden"),
        (at("html"), "not JSON: expected value at line 1 column 1"),
        (at("no-name"), "`name` is missing"),
        (at("bad-attributes"), "`attributes[1].trait_type` is missing"),
        (at("array"), "metadata is an array, not a JSON object"),
        (
            "ar://abcdef".to_owned(),
            "unsupported URI scheme `ar`: expected http(s)://, ipfs:// or data:application/json",
        ),
        ("data:text/plain,hello".to_owned(), "data: URI of type text/plain: expected application/json"),
        ("ipfs://".to_owned(), "ipfs:// URI without a valid CID after the scheme"),
    ];
    let expected: Vec<(String, String)> = expected.into_iter().map(|(u, r)| (u, r.to_owned())).collect();
    assert_eq!(reasons, expected);
    assert_eq!(host.hits("gone"), 1, "a 404 is not tried again");
}

#[tokio::test]
async fn a_flaky_host_is_tried_again_and_a_dead_one_makes_the_token_invalid() {
    let host = fake_nft::spawn(docs(vec![
        ("ok", Doc::Json(valid("Fine"))),
        ("flaky", Doc::FailFirst { failures: 2, status: 502, then: valid("Flaky") }),
        ("down", Doc::Status(503)),
    ]))
    .await;
    let uris: Vec<String> = ["ok", "flaky", "down"].iter().map(|p| format!("{}/{p}", host.base())).collect();
    let run = refresh(&host, &uris, &[]).await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    assert_eq!(
        run.record.result,
        Some(json!({ "ok": 2, "invalid": [
            { "uri": uris[2], "reason": "unavailable after 3 attempts: HTTP 503 Service Unavailable" },
        ]}))
    );
    assert_eq!((host.hits("flaky"), host.hits("down")), (3, 3));
}

#[tokio::test]
async fn a_slow_host_times_out_per_token() {
    let host = fake_nft::spawn(docs(vec![
        ("ok", Doc::Json(valid("Fine"))),
        ("slow", Doc::Slow(Duration::from_secs(3), valid("Slow"))),
    ]))
    .await;
    let uris: Vec<String> = ["ok", "slow"].iter().map(|p| format!("{}/{p}", host.base())).collect();
    let run = refresh(&host, &uris, &[("NFT_FETCH_TIMEOUT_SECS", "0.2")]).await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    let result = run.record.result.unwrap();
    assert_eq!(result["ok"], 1);
    assert_eq!(result["invalid"][0]["reason"], "unavailable after 3 attempts: timed out after 0.2 s");
}

#[tokio::test]
async fn when_every_token_is_unavailable_the_task_retries() {
    let host = fake_nft::spawn(docs(vec![("a", Doc::Status(503)), ("b", Doc::Status(500))])).await;
    let uris: Vec<String> = ["a", "b"].iter().map(|p| format!("{}/{p}", host.base())).collect();
    let run = refresh(&host, &uris, &[]).await;
    assert_eq!(run.record.state, TaskState::Retry);
    let error = run.record.error.unwrap();
    assert_eq!(error.kind, "MetadataUnavailable");
    assert!(error.message.contains("every token URI was unavailable (2 of them)"), "{}", error.message);
    assert_eq!(run.response.batch_item_failures.len(), 1, "handed back for redelivery");
}

#[tokio::test]
async fn fetches_are_bounded_by_the_concurrency_setting() {
    let entries: Vec<(String, Doc)> =
        (0..6).map(|i| (format!("t/{i}"), Doc::Slow(Duration::from_millis(150), valid(&format!("T{i}"))))).collect();
    let host = fake_nft::spawn(entries.into_iter().collect()).await;
    let uris: Vec<String> = (0..6).map(|i| format!("{}/t/{i}", host.base())).collect();
    let run = refresh(&host, &uris, &[("NFT_FETCH_CONCURRENCY", "2")]).await;
    assert_eq!(run.record.result.unwrap()["ok"], 6);
    assert_eq!(host.peak_in_flight(), 2);
}

#[tokio::test]
async fn progress_is_reported_per_token() {
    let host = fake_nft::spawn(docs(vec![("a", Doc::Json(valid("A"))), ("b", Doc::Json(valid("B")))])).await;
    let uris: Vec<String> = ["a", "missing", "b", "c"].iter().map(|p| format!("{}/{p}", host.base())).collect();
    // One at a time, so the order of completions is the order given.
    let registry = registry_with(settings(&host, &[("NFT_FETCH_CONCURRENCY", "1")]));
    let (result, log) = call(&registry, REFRESH_METADATA, vec![json!(uris)]).await;
    assert_eq!(result.unwrap()["ok"], 2);
    assert_eq!(
        log.statuses(),
        [
            "fetched 1/4 tokens (0 invalid)",
            "fetched 2/4 tokens (1 invalid)",
            "fetched 3/4 tokens (1 invalid)",
            "fetched 4/4 tokens (2 invalid)"
        ]
    );
    assert_eq!(log.percents(), [25, 50, 75, 100]);
}

#[tokio::test]
async fn bad_settings_and_arguments_are_named() {
    let host = fake_nft::spawn(BTreeMap::new()).await;
    for (name, value) in [("NFT_FETCH_CONCURRENCY", "0"), ("NFT_FETCH_TIMEOUT_SECS", "never"), ("IPFS_GATEWAY", "gw")] {
        let run = run_task(
            registry_with(Settings::fixed([(name, value)])),
            REFRESH_METADATA,
            vec![json!(["ipfs://QmA/1"])],
            Map::new(),
        )
        .await;
        assert_eq!(run.record.state, TaskState::Failure);
        let error = run.record.error.unwrap();
        assert_eq!(error.kind, "InvalidSetting");
        assert!(error.message.contains(name), "{}", error.message);
    }
    let run =
        run_task(registry_with(settings(&host, &[])), REFRESH_METADATA, vec![json!("ipfs://QmA/1")], Map::new()).await;
    let error = run.record.error.unwrap();
    assert_eq!(error.kind, "InvalidArguments");
    assert!(error.message.contains("token_uris"), "{}", error.message);
    assert!(host.hits.lock().unwrap().is_empty());
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
