//! `refresh_collection` against the stand-in: the trait table and rarity ranking from an
//! `ipfs://` and an `http://` base, invalid tokens, progress, failures and bad arguments.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use taskbeat::TaskState;
use taskbeat::testing::run_task;
use taskbeat_e2e::fake_nft::{self, Doc, FakeNft};
use taskbeat_nftfair::{REFRESH_COLLECTION, registry_with};

use crate::support::{call, settings};

/// Tokens 0-5 under `prefix/`; token 4 is missing (404). Five valid tokens:
/// Hat: Cap 4, Crown 1; Eyes: Blue 4, Laser 1; Level: 7 once.
fn collection(prefix: &str) -> BTreeMap<String, Doc> {
    let traits: [&[(&str, Value)]; 6] = [
        &[("Hat", json!("Cap")), ("Eyes", json!("Blue"))],
        &[("Hat", json!("Cap")), ("Eyes", json!("Blue"))],
        &[("Hat", json!("Cap")), ("Eyes", json!("Laser"))],
        &[("Hat", json!("Crown")), ("Eyes", json!("Blue"))],
        &[],
        &[("Hat", json!("Cap")), ("Eyes", json!("Blue")), ("Level", json!(7))],
    ];
    traits
        .iter()
        .enumerate()
        .filter(|(id, _)| *id != 4)
        .map(|(id, traits)| (format!("{prefix}/{id}"), Doc::Json(fake_nft::token(&format!("Fair #{id}"), traits))))
        .collect()
}

fn expected(uri_of_4: &str) -> Value {
    // Score: sum over a token's traits of 5 / count.
    json!({
        "count": 6,
        "ok": 5,
        "invalid": [{ "token_id": 4, "uri": uri_of_4, "reason": "HTTP 404 Not Found" }],
        "top": [
            { "rank": 1, "token_id": 5, "name": "Fair #5", "score": 7.5 },
            { "rank": 2, "token_id": 2, "name": "Fair #2", "score": 6.25 },
            { "rank": 3, "token_id": 3, "name": "Fair #3", "score": 6.25 },
            { "rank": 4, "token_id": 0, "name": "Fair #0", "score": 2.5 },
            { "rank": 5, "token_id": 1, "name": "Fair #1", "score": 2.5 },
        ],
        "traits": {
            "Eyes": { "Blue": 4, "Laser": 1 },
            "Hat": { "Cap": 4, "Crown": 1 },
            "Level": { "7": 1 },
        },
    })
}

async fn refresh(host: &FakeNft, base: &str, count: Value) -> taskbeat::testing::Run {
    run_task(registry_with(settings(host, &[])), REFRESH_COLLECTION, vec![json!(base), count], Map::new()).await
}

#[tokio::test]
async fn an_ipfs_collection_is_ranked_by_trait_rarity() {
    let host = fake_nft::spawn(collection("ipfs/QmCollection")).await;
    let run = refresh(&host, "ipfs://QmCollection/", json!(6)).await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    assert_eq!(run.record.result, Some(expected("ipfs://QmCollection/4")));
    assert_eq!(run.record.progress, 100);
}

#[tokio::test]
async fn an_http_collection_gives_the_same_ranking() {
    let host = fake_nft::spawn(collection("api/meta")).await;
    let base = format!("{}/api/meta", host.base());
    let run = refresh(&host, &base, json!(6)).await;
    assert_eq!(run.record.state, TaskState::Success, "{:?}", run.record.error);
    assert_eq!(run.record.result, Some(expected(&format!("{base}/4"))));
}

#[tokio::test]
async fn the_top_is_limited_to_ten() {
    let docs: BTreeMap<String, Doc> = (0..12)
        .map(|id| (format!("c/{id}"), Doc::Json(fake_nft::token(&format!("T{id}"), &[("Id", json!(id))]))))
        .collect();
    let host = fake_nft::spawn(docs).await;
    let run = refresh(&host, &format!("{}/c", host.base()), json!(12)).await;
    let result = run.record.result.unwrap();
    let top = result["top"].as_array().unwrap();
    assert_eq!(top.len(), 10);
    // Every token is unique: equal scores (12 each), ranked by token id.
    assert!(top.iter().enumerate().all(|(i, t)| t["token_id"] == i && t["score"] == 12.0), "{top:?}");
    assert_eq!(result["traits"]["Id"].as_object().unwrap().len(), 12);
}

#[tokio::test]
async fn progress_is_reported_per_token() {
    let host = fake_nft::spawn(collection("ipfs/QmCollection")).await;
    let registry = registry_with(settings(&host, &[]));
    let (result, log) = call(&registry, REFRESH_COLLECTION, vec![json!("ipfs://QmCollection"), json!(6)]).await;
    assert_eq!(result.unwrap()["ok"], 5);
    let statuses = log.statuses();
    assert_eq!(statuses.len(), 6, "{statuses:?}");
    assert_eq!(statuses.last().unwrap(), "fetched 6/6 tokens (1 invalid)");
    assert!(statuses.iter().enumerate().all(|(i, s)| s.starts_with(&format!("fetched {}/6 tokens", i + 1))));
    assert_eq!(log.percents(), [16, 33, 50, 66, 83, 100]);
}

#[tokio::test]
async fn a_gateway_that_is_down_makes_the_task_retry() {
    let docs: BTreeMap<String, Doc> = (0..3).map(|id| (format!("ipfs/QmDown/{id}"), Doc::Status(504))).collect();
    let host = fake_nft::spawn(docs).await;
    let run = refresh(&host, "ipfs://QmDown", json!(3)).await;
    assert_eq!(run.record.state, TaskState::Retry);
    assert_eq!(run.record.error.unwrap().kind, "MetadataUnavailable");
}

#[tokio::test]
async fn bad_arguments_are_explained() {
    let host = fake_nft::spawn(BTreeMap::new()).await;
    for (base, count, expected) in [
        ("ipfs://QmA", json!(0), "`count` is 0"),
        ("ipfs://QmA", json!(100_001), "1 to 100000"),
        ("ipfs://QmA", json!(-3), "count"),
        ("data:application/json,{}", json!(3), "`base_uri` must be an http(s):// or ipfs:// URI"),
        ("ftp://host/meta", json!(3), "`base_uri` must be"),
        ("ipfs://", json!(3), "`base_uri` must be"),
    ] {
        let run = refresh(&host, base, count.clone()).await;
        assert_eq!(run.record.state, TaskState::Failure, "{base} {count}");
        let error = run.record.error.unwrap();
        assert_eq!(error.kind, "InvalidArguments", "{base} {count}");
        assert!(error.message.contains(expected), "{base} {count}: {}", error.message);
    }
    assert!(host.hits.lock().unwrap().is_empty());
}
