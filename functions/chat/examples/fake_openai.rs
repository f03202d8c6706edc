//! `cargo run -p taskbeat-chat --example fake_openai [PORT]`: the tests' stand-in for an
//! OpenAI-compatible API, for trying the chat tasks under `taskbeat local` by hand:
//!
//! ```sh
//! CHAT_API_BASE=http://127.0.0.1:8081 CHAT_API_KEY=sk-local-test CHAT_MODEL=gpt-local \
//!   cargo run -p taskbeat-cli -- local
//! ```

use std::time::Duration;

use taskbeat_e2e::fake_openai::{Options, spawn_on};

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8081);
    let options = Options {
        api_key: "sk-local-test".to_owned(),
        // Slow enough to watch the token count move.
        chunk_delay: Duration::from_millis(40),
        ..Options::default()
    };
    let api = spawn_on(options, port).await;
    eprintln!(
        "fake chat API on {} (key sk-local-test; a last message containing [status 503], [status 429], [quota], [status 400], [cut] or [garbage] fails that way); Ctrl-C stops",
        api.base()
    );
    let _ = tokio::signal::ctrl_c().await;
}
