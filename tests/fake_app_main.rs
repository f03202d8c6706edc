//! `cargo run -p taskbeat-e2e --bin fake-app [PORT]`: the tests' stand-in for the Flask app's
//! user API, for trying `taskbeat local` by hand (`APP_API_BASE=http://127.0.0.1:PORT`).

use std::time::Duration;

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8080);
    let options = taskbeat_e2e::fake_app::Options {
        inactive: (1..=25).map(|i| format!("inactive-{i}")).collect(),
        page_size: 10,
        // Slow enough to watch progress move.
        delay: Duration::from_millis(300),
    };
    let app = taskbeat_e2e::fake_app::spawn_on(options, port).await;
    eprintln!(
        "fake app API on {base} (users u*, missing-* -> 404, down-* -> 503; webhook {base}/hooks/alerts); Ctrl-C stops",
        base = app.base()
    );
    let _ = tokio::signal::ctrl_c().await;
}
