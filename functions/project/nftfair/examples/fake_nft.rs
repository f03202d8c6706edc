//! `cargo run -p taskbeat-nftfair --example fake_nft [PORT]`: the tests' stand-in for NFT
//! metadata hosts, for trying the NFT Fair tasks under `taskbeat local` by hand:
//!
//! ```sh
//! IPFS_GATEWAY=http://127.0.0.1:8082/ipfs/ cargo run -p taskbeat-cli -- local
//! ```
//!
//! It serves a 20-token collection at `ipfs://QmDemo/{0..19}` and `http://127.0.0.1:PORT/meta/{0..19}`
//! (token 13 is missing, token 7 is not valid metadata), and `/down/{i}` always answers 503.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use taskbeat_e2e::fake_nft::{Doc, spawn_on, token};

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8082);
    let hats = ["Cap", "Cap", "Cap", "Beanie", "Beanie", "Crown"];
    let eyes = ["Blue", "Blue", "Green", "Laser"];
    let mut docs = BTreeMap::new();
    for id in 0..20usize {
        let traits = [("Hat", json!(hats[id % hats.len()])), ("Eyes", json!(eyes[id * 7 % eyes.len()]))];
        let mut doc = token(&format!("Fair #{id}"), &traits);
        if id == 7 {
            doc["attributes"] = json!("not a list");
        }
        if id == 13 {
            continue;
        }
        // Slow enough to watch progress move.
        let slow = Doc::Slow(Duration::from_millis(250), doc);
        docs.insert(format!("ipfs/QmDemo/{id}"), slow.clone());
        docs.insert(format!("meta/{id}"), slow);
        docs.insert(format!("down/{id}"), Doc::Status(503));
    }
    let host = spawn_on(docs, port).await;
    eprintln!(
        "fake metadata host on {} (gateway {}; ipfs://QmDemo/0..19, {}/meta/0..19, /down/* -> 503); Ctrl-C stops",
        host.base(),
        host.gateway(),
        host.base()
    );
    let _ = tokio::signal::ctrl_c().await;
}
