//! `taskbeat local` runs all four modules: a task of each, sent from the CLI, reaches SUCCESS
//! against local stand-ins for the outside services.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::json;
use taskbeat_e2e::{fake_app, fake_nft, fake_openai, fake_webhook};

use super::{BIN, interrupt, start_local_env, text};

struct StandIns {
    app: String,
    webhook: String,
    openai: String,
    openai_key: String,
    nft_base: String,
    nft_gateway: String,
}

/// Starts every stand-in on a runtime of its own thread (the test itself blocks on processes).
fn stand_ins() -> StandIns {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.block_on(async move {
            let app = fake_app::spawn(fake_app::Options::default()).await;
            let webhook = fake_webhook::spawn([]).await;
            let options = fake_openai::Options::default();
            let key = options.api_key.clone();
            let openai = fake_openai::spawn(options).await;
            let docs = BTreeMap::from([
                ("meta/1".to_owned(), fake_nft::Doc::Json(fake_nft::token("One", &[("color", json!("red"))]))),
                ("ipfs/QmCol/0".to_owned(), fake_nft::Doc::Json(fake_nft::token("Zero", &[("color", json!("red"))]))),
            ]);
            let nft = fake_nft::spawn(docs).await;
            tx.send(StandIns {
                app: app.base(),
                webhook: webhook.url("/hooks/alerts"),
                openai: openai.base(),
                openai_key: key,
                nft_base: nft.base(),
                nft_gateway: nft.gateway(),
            })
            .unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

#[test]
fn every_module_runs_a_task_under_local() {
    let s = stand_ins();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("APP_API_BASE", s.app.clone()),
        ("ALERT_WEBHOOK_URL", s.webhook.clone()),
        ("CHAT_API_BASE", s.openai.clone()),
        ("CHAT_API_KEY", s.openai_key.clone()),
        ("CHAT_MODEL", "gpt-local".to_owned()),
        ("IPFS_GATEWAY", s.nft_gateway.clone()),
    ];
    // The built-in manifest (no taskbeat.toml in the folder): all four modules.
    let mut local = start_local_env(dir.path(), &env, &["--no-schedules"]);
    let tasks = [
        ("app.schedules.user_task.process_users", json!([["u1", "u2"], "recompute"])),
        ("app.schedules.alert.send_alert", json!(["info", "deploy done", "v42 is live", "deploy-v42"])),
        ("app.schedules.chat_tasks.generate_reply", json!([[{ "role": "user", "content": "你好" }]])),
        (
            "app.schedules.project.nftfair_task.refresh_metadata",
            json!([[format!("{}/meta/1", s.nft_base), "ipfs://QmCol/0"]]),
        ),
    ];
    for (task, args) in tasks {
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args(["send", task, "--args", &args.to_string(), "--wait", "--output", "json"])
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{task}: {stdout}\n{}", text(&out.stderr));
        assert!(stdout.contains("\"SUCCESS\""), "{task}: {stdout}");
    }
    interrupt(&mut local);
}
