//! The dashboard in a real headless Chromium (Debian's `chromium`, driven through
//! `chromedriver` over WebDriver): a task's progress moves to SUCCESS on its page, a dead
//! letter is redriven from the queues page and then succeeds, a schedule runs from its page,
//! the charts draw. Screenshots of each page go to the folder the test prints. Also: the token
//! rule off loopback, and the API on the emulator.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use taskbeat_e2e::fake_app;

use super::ops::{PROCESS_USERS, Rig, counts};
use super::{interrupt, text};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOKEN: &str = "correct-horse-battery-staple";
/// A schedule of the user module, for the schedules page.
const NIGHTLY_CLEANUP: &str = "\n[schedules.nightly_cleanup]\ntask = \"app.schedules.user_task.cleanup_inactive_users\"\n\
                               minute = 0\nhour = 3\nargs = [30]\n";

/// Where the screenshots go: $TASKBEAT_SCREENSHOTS, or target/tmp/dashboard-screenshots.
fn screenshot_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("TASKBEAT_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A chromedriver process, stopped when dropped.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_chromedriver() -> Driver {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} is missing: the dashboard tests need Debian's chromium and chromium-driver \
             (scripts/test installs them: apt-get install chromium chromium-driver)"
        );
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver(child, port);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ]
    .map(str::to_owned)
    .into_iter()
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), json!({ "binary": CHROMIUM, "args": args }));
    ClientBuilder::rustls()
        .unwrap()
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .unwrap()
}

/// Waits until `probe` returns something (an element's text, say).
async fn eventually<T, F, Fut>(what: &str, seconds: u64, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < Duration::from_secs(seconds), "waited {seconds} s for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(client: &Client, css: &str) -> Option<String> {
    client.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    let path = screenshot_dir().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// An HTTP client that shows redirects instead of following them.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[test]
fn dashboard_in_chromium() {
    // Slow enough that progress can be seen moving.
    let app = fake_app::spawn_detached(fake_app::Options {
        inactive: vec!["inactive-1".into(), "inactive-2".into()],
        page_size: 10,
        delay: Duration::from_millis(250),
    });
    let rig = Rig::new(false, app.base());

    // A bad deploy dead-letters a task (its module does not have it).
    rig.deploy("taskbeat-alert");
    let mut local = rig.start_local();
    let lost = rig.send(&[r#"[["u1","u2"],"recompute"]"#]);
    rig.wait_for_depth("a dead letter", |d| counts(d).3 == 1);
    interrupt(&mut local.0);

    // The fixed deploy (with a schedule, which `local` refuses while its module lacks the task),
    // with the dashboard on a free loopback port.
    rig.add_to_manifest(NIGHTLY_CLEANUP);
    rig.deploy("taskbeat-user");
    let (mut local, url) = rig.start_local_with(&["--dashboard-bind", "127.0.0.1:0"]);
    let url = url.expect("taskbeat local prints the dashboard's address");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let base = url.trim_end_matches('/').to_owned();
    let driver = start_chromedriver();
    let profile = tempfile::tempdir().unwrap();
    eprintln!("screenshots go to {}", screenshot_dir().display());

    rig.runtime.block_on(async {
        let client = browser(&driver, profile.path()).await;

        // One task: its page shows the progress moving, then SUCCESS.
        let users: Vec<String> = (1..=10).map(|i| format!("u{i}")).collect();
        let id = rig.send(&[&json!([users, "recompute"]).to_string()]);
        client.goto(&format!("{base}/tasks/{id}")).await.unwrap();
        let mut seen: Vec<u32> = Vec::new();
        let started = Instant::now();
        let final_state = loop {
            assert!(started.elapsed() < Duration::from_secs(60), "the task page never said SUCCESS; progress {seen:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(bar) = client.find(Locator::Css("#progress [role=progressbar]")).await else { continue };
            let Some(value) = bar.attr("aria-valuenow").await.ok().flatten().and_then(|v| v.parse::<u32>().ok()) else {
                continue;
            };
            if seen.last() != Some(&value) {
                seen.push(value);
                if value > 0 && value < 100 {
                    screenshot(&client, "task-running.png").await;
                }
            }
            if let Some(state) = text_of(&client, "h1 .state").await.filter(|s| s == "SUCCESS") {
                break state;
            }
        };
        assert_eq!(final_state, "SUCCESS");
        assert!(seen.iter().any(|p| *p > 0 && *p < 100), "progress seen moving on the page: {seen:?}");
        assert_eq!(seen.last(), Some(&100), "{seen:?}");
        let timeline = text_of(&client, "#timeline").await.unwrap();
        for state in ["PENDING", "STARTED", "PROGRESS", "SUCCESS"] {
            assert!(timeline.contains(state), "the timeline has {state}: {timeline}");
        }
        let result = text_of(&client, "#result").await.unwrap();
        assert!(result.contains("\"processed\": 10"), "{result}");
        let args = text_of(&client, "#args").await.unwrap();
        assert!(args.contains("u10") && args.contains("recompute"), "{args}");
        screenshot(&client, "task.png").await;

        // A failed task is retried from its page: a double click makes one new task, whose page opens.
        let failed = rig.send(&[r#"[["x1"],"explode"]"#]);
        client.goto(&format!("{base}/tasks/{failed}")).await.unwrap();
        eventually("the Retry button", 30, || async { client.find(Locator::Css("#retry")).await.ok() }).await;
        client.execute("const b = document.getElementById('retry'); b.click(); b.click();", vec![]).await.unwrap();
        let retried = eventually("the retry's page", 20, || async {
            let url = client.current_url().await.ok()?;
            url.path().strip_prefix("/tasks/").filter(|id| *id != failed).map(str::to_owned)
        })
        .await;
        assert_eq!(rig.status(&retried)["parent_id"], failed.as_str());
        let children: Vec<Value> = rig.json(&["list", "--limit", "100"])["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["parent_id"] == failed.as_str())
            .cloned()
            .collect();
        assert_eq!(children.len(), 1, "one retry for a double click: {children:?}");

        // Tasks: the list, live, with filters.
        client.goto(&format!("{base}/")).await.unwrap();
        eventually("the task in the list", 20, || async {
            let row = text_of(&client, &format!("tr[data-id='{id}']")).await?;
            row.contains("SUCCESS").then_some(())
        })
        .await;
        assert!(text_of(&client, &format!("tr[data-id='{lost}']")).await.unwrap().contains("FAILURE"));
        screenshot(&client, "tasks.png").await;
        client.goto(&format!("{base}/?state=FAILURE")).await.unwrap();
        eventually("the FAILURE filter", 20, || async {
            let rows = text_of(&client, "#task-rows").await?;
            (rows.contains("FAILURE") && !rows.contains("SUCCESS")).then_some(())
        })
        .await;
        let selected = client.find(Locator::Css("#filter-state")).await.unwrap().prop("value").await.unwrap();
        assert_eq!(selected.as_deref(), Some("FAILURE"), "the filter shows what is applied");
        screenshot(&client, "tasks-failed.png").await;

        // Queues: the dead letter with its reason; redriven from the page, it then succeeds.
        client.goto(&format!("{base}/queues")).await.unwrap();
        let letter = eventually("the dead letter on the queues page", 20, || async {
            text_of(&client, "#dead-letter-rows tr.dead").await
        })
        .await;
        assert!(letter.contains("unknown task") && letter.contains("module `alert`"), "{letter}");
        let queue_row = text_of(&client, "#queue-rows tr[data-queue=default]").await.unwrap();
        assert!(queue_row.contains("Redrive all"), "{queue_row}");
        screenshot(&client, "queues.png").await;
        client.find(Locator::Css("#dead-letter-rows button.redrive")).await.unwrap().click().await.unwrap();
        let notice = eventually("the redrive's notice", 20, || async {
            text_of(&client, "#notice").await.filter(|t| !t.is_empty())
        })
        .await;
        assert!(notice.contains("Moved 1 dead letter back"), "{notice}");
        eventually("the redriven task to succeed", 60, || async {
            (rig.status(&lost)["state"] == "SUCCESS").then_some(())
        })
        .await;
        eventually("the queues page to show no dead letter", 20, || async {
            let rows = text_of(&client, "#dead-letter-rows").await?;
            rows.contains("No dead letters").then_some(())
        })
        .await;
        screenshot(&client, "queues-redriven.png").await;

        // Schedules: expressions and next fire times; run now opens the new task's page.
        client.goto(&format!("{base}/schedules")).await.unwrap();
        let row =
            eventually("the schedule", 20, || async { text_of(&client, "tr[data-schedule=nightly_cleanup]").await })
                .await;
        assert!(row.contains("cron(0 3 * * ? *)") && row.contains("03:00:00"), "{row}");
        let toggle = client.find(Locator::Css("tr[data-schedule=nightly_cleanup] button.toggle")).await.unwrap();
        assert!(toggle.attr("disabled").await.unwrap().is_some(), "enable/disable needs --aws");
        screenshot(&client, "schedules.png").await;
        client.find(Locator::Css("tr[data-schedule=nightly_cleanup] button.run")).await.unwrap().click().await.unwrap();
        let ran = eventually("the scheduled task's page", 20, || async {
            let url = client.current_url().await.ok()?;
            url.path().strip_prefix("/tasks/").map(str::to_owned)
        })
        .await;
        eventually("the scheduled task to succeed", 60, || async {
            (text_of(&client, "h1 .state").await? == "SUCCESS").then_some(())
        })
        .await;
        assert_eq!(rig.status(&ran)["task"], "app.schedules.user_task.cleanup_inactive_users");

        // Charts: both drawn, and the numbers beside them.
        client.goto(&format!("{base}/charts")).await.unwrap();
        eventually("the charts", 30, || async {
            let rows = text_of(&client, "#duration-rows").await?;
            let drawn = client
                .execute(
                    "return [...document.querySelectorAll('img.chart')].every(i => i.complete && i.naturalWidth > 0)",
                    vec![],
                )
                .await
                .ok()?;
            (rows.contains(PROCESS_USERS) && drawn == Value::Bool(true)).then_some(())
        })
        .await;
        let totals = text_of(&client, "#totals").await.unwrap();
        assert!(totals.contains("SUCCESS 3") || totals.contains("SUCCESS\n3"), "{totals}");
        screenshot(&client, "charts.png").await;

        client.close().await.unwrap();
    });
    interrupt(&mut local.0);
    drop(driver);
}

/// `taskbeat dashboard` with its stderr read until the banner; the port it listens on.
fn start_dashboard(rig: &Rig, args: &[&str]) -> (super::ops::Running, u16) {
    let mut command = rig.command();
    command.arg("dashboard").args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = super::ops::Running(command.spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let banner = lines.next().unwrap().unwrap();
    std::thread::spawn(move || for _ in lines {});
    let port = banner
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|host| host.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no address in the banner: {banner}"));
    (child, port)
}

#[test]
fn off_loopback_the_dashboard_needs_its_token() {
    let app = fake_app::spawn_detached(fake_app::Options::default());
    let rig = Rig::new(false, app.base());

    let refused = rig.run(&["dashboard", "--bind", "0.0.0.0:0"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = text(&refused.stderr);
    assert!(err.contains("give it a token") && err.contains("--token"), "{err}");
    let short = rig.run(&["dashboard", "--bind", "0.0.0.0:0", "--token", "short"]);
    assert!(text(&short.stderr).contains("at least 16"), "{}", text(&short.stderr));

    let (_dashboard, port) = start_dashboard(&rig, &["--bind", "0.0.0.0:0", "--token", TOKEN]);
    let http = http_client();
    rig.runtime.block_on(async {
        let at = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let status = |r: reqwest::Response| r.status().as_u16();
        assert_eq!(status(http.get(at("/api/info")).send().await.unwrap()), 401);
        assert_eq!(status(http.get(at("/")).send().await.unwrap()), 401);
        let wrong = http.get(at("/api/tasks")).bearer_auth("correct-horse-battery-stapl3").send().await.unwrap();
        assert_eq!(status(wrong), 401);
        let body: Value = http.get(at("/api/info")).send().await.unwrap().json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        let ok = http.get(at("/api/info")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(ok.status().as_u16(), 200);
        let info: Value = ok.json().await.unwrap();
        assert_eq!(info["backend"], "embedded");
        // Opening /?token=... once keeps the token in a cookie and drops it from the address.
        let opened = http.get(at(&format!("/?token={TOKEN}&state=FAILURE"))).send().await.unwrap();
        assert_eq!(opened.status().as_u16(), 303);
        assert_eq!(opened.headers()["location"], "/?state=FAILURE");
        let cookie = opened.headers()["set-cookie"].to_str().unwrap().to_owned();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
        let with_cookie = http.get(at("/api/tasks")).header("cookie", cookie.split(';').next().unwrap());
        assert_eq!(status(with_cookie.send().await.unwrap()), 200);
        // A change without the page's header is refused even with the token.
        let forged = http.post(at("/api/dead-letters/redrive")).bearer_auth(TOKEN).json(&json!({"all": true}));
        assert_eq!(status(forged.send().await.unwrap()), 403);
        let real = http
            .post(at("/api/dead-letters/redrive"))
            .bearer_auth(TOKEN)
            .header("x-taskbeat", "1")
            .json(&json!({"all": true}));
        assert_eq!(status(real.send().await.unwrap()), 200);
    });

    // On loopback without a token, only loopback host names are answered.
    let (_dashboard, port) = start_dashboard(&rig, &["--bind", "127.0.0.1:0"]);
    rig.runtime.block_on(async {
        let at = format!("http://127.0.0.1:{port}/api/info");
        assert_eq!(http.get(&at).send().await.unwrap().status().as_u16(), 200);
        let rebound = http.get(&at).header("host", "evil.example").send().await.unwrap();
        assert_eq!(rebound.status().as_u16(), 403);
    });
}

/// The API behind every page on DynamoDB and SQS (the emulator).
#[test]
fn dashboard_api_on_the_emulator() {
    let app = fake_app::spawn_detached(fake_app::Options::default());
    let rig = Rig::new(true, app.base());
    rig.deploy("taskbeat-alert");
    let mut local = rig.start_local();
    let lost = rig.send(&[r#"[["u1"],"recompute"]"#]);
    rig.wait_for_depth("a dead letter", |d| counts(d).3 == 1);
    interrupt(&mut local.0);
    rig.add_to_manifest(NIGHTLY_CLEANUP);
    rig.deploy("taskbeat-user");
    let (mut local, url) = rig.start_local_with(&["--dashboard-bind", "127.0.0.1:0"]);
    let base = url.unwrap().trim_end_matches('/').to_owned();
    let http = http_client();
    rig.runtime.block_on(async {
        let get = |path: &str| {
            let path = path.to_owned();
            let request = http.get(format!("{base}{path}"));
            async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status().as_u16(), 200, "{path}");
                response.json::<Value>().await.unwrap()
            }
        };
        let post = |path: &str, body: Value| {
            let path = path.to_owned();
            let request = http.post(format!("{base}{path}")).header("x-taskbeat", "1").json(&body);
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.unwrap())
            }
        };
        assert_eq!(get("/api/info").await["backend"], "aws");
        let queues = get("/api/queues").await;
        assert_eq!(queues[0]["dlq"], 1, "{queues}");
        let letters = get("/api/dead-letters").await;
        assert_eq!(letters[0]["task_id"], lost.as_str(), "{letters}");
        let (status, moved) = post("/api/dead-letters/redrive", json!({ "queue": "default", "all": true })).await;
        assert_eq!((status, moved[0]["moved"].as_u64()), (200, Some(1)), "{moved}");
        eventually("the redriven task to succeed", 60, || async {
            (get(&format!("/api/tasks/{lost}")).await["state"] == "SUCCESS").then_some(())
        })
        .await;
        let listed = get("/api/tasks?state=SUCCESS&since=1h").await;
        assert_eq!(listed["tasks"][0]["id"], lost.as_str(), "{listed}");
        let schedules = get("/api/schedules").await;
        assert_eq!(schedules[0]["name"], "nightly_cleanup");
        assert!(schedules[0]["deployed"].is_null(), "not deployed yet: {schedules}");
        let (status, refused) = post("/api/schedules/nightly_cleanup/disable", json!({})).await;
        assert_eq!(status, 409, "{refused}");
        // Deployed (as the template would), the rule is switched from the page.
        let rule = rig.manifest().rule_name("nightly_cleanup");
        let events = aws_sdk_eventbridge::Client::new(&taskbeat_e2e::emulator::sdk_config().await);
        events.put_rule().name(&rule).schedule_expression("cron(0 3 * * ? *)").send().await.unwrap();
        assert_eq!(get("/api/schedules").await[0]["deployed"]["enabled"], true);
        let (status, disabled) = post("/api/schedules/nightly_cleanup/disable", json!({})).await;
        assert_eq!((status, &disabled["enabled"]), (200, &Value::Bool(false)), "{disabled}");
        assert_eq!(get("/api/schedules").await[0]["deployed"]["enabled"], false);
        let (status, enabled) = post("/api/schedules/nightly_cleanup/enable", json!({})).await;
        assert_eq!((status, &enabled["enabled"]), (200, &Value::Bool(true)), "{enabled}");
        let (status, ran) = post("/api/schedules/nightly_cleanup/run", json!({})).await;
        assert_eq!(status, 200, "{ran}");
        let charts = get("/api/charts").await;
        assert_eq!(charts["per_minute"][0]["state"], "SUCCESS");
        let (status, retry) = post(&format!("/api/tasks/{lost}/retry"), json!({})).await;
        assert_eq!(status, 409, "a SUCCESS task is not retried: {retry}");
        assert!(retry["error"].as_str().unwrap().contains("only a FAILURE or REVOKED task"), "{retry}");
        let missing = http.get(format!("{base}/api/tasks/not-a-uuid")).send().await.unwrap();
        assert_eq!(missing.status().as_u16(), 400);
    });
    interrupt(&mut local.0);
}
