//! The web console in a real browser: Debian's Chromium driven through ChromeDriver (W3C WebDriver over
//! HTTP) against the served binary. `scripts/test` installs both and runs these with `--include-ignored`;
//! where they cannot be installed it says SKIPPED and leaves them out.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::helpers::{ServerProcess, admin_key_in};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one headless Chromium session.
struct Browser {
    driver: std::process::Child,
    http: reqwest::Client,
    session: String,
    base: String,
    _profile: tempfile::TempDir,
}

/// Ends the browser session (which quits Chromium) before the driver: killing ChromeDriver alone leaves
/// Chromium running. A plain blocking request, so it also runs when a failed assertion unwinds.
impl Drop for Browser {
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let authority = self.base.trim_start_matches("http://");
        if let Ok(mut stream) = std::net::TcpStream::connect(authority) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Self {
        let driver_path = std::env::var("CTX_TEST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium = std::env::var("CTX_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&driver_path).exists() && std::path::Path::new(&chromium).exists(),
            "this test needs Chromium and ChromeDriver ({chromium}, {driver_path}): scripts/test installs them"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = std::process::Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = std::time::Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        // The flags keep Chromium off the network beyond loopback (this machine has none), as the image's
        // browser probe does.
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let created: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session = created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).into();
        Self { driver, http, session, base, _profile: profile }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if let Some(error) = answer["value"]["error"].as_str() {
            panic!("webdriver {path}: {error}: {}", answer["value"]["message"]);
        }
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn open(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    async fn find(&self, css: &str) -> String {
        let found = self.post("/element", json!({"using": "css selector", "value": css})).await;
        found[ELEMENT].as_str().unwrap().to_string()
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({})).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/clear"), json!({})).await;
        self.post(&format!("/element/{element}/value"), json!({ "text": text })).await;
    }

    async fn script(&self, source: &str) -> Value {
        self.post("/execute/sync", json!({"script": source, "args": []})).await
    }

    /// Waits until `source` (a script body returning a value) returns something truthy; returns it.
    async fn until(&self, what: &str, source: &str) -> Value {
        let started = std::time::Instant::now();
        loop {
            let value = self.script(source).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("")
                && value != json!([]);
            if truthy {
                return value;
            }
            let status = self.script("return document.getElementById('status').textContent").await;
            assert!(started.elapsed() < Duration::from_secs(30), "{what}: not within 30 s (status line: {status})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn key(&self, key: &str) {
        let press = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.post("/actions", press).await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap()).unwrap()
    }
}

async fn call(base: &str, key: &str, tool: &str, args: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{base}/mcp/tool/{tool}"))
        .bearer_auth(key)
        .json(&args)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{tool}: {}", response.status());
    response.json().await.unwrap()
}

#[tokio::test]
#[ignore = "needs Chromium and ChromeDriver (scripts/test installs them from Debian's packages)"]
async fn console_browser_signs_in_stores_finds_and_draws_a_context_graph() {
    let dir = tempfile::tempdir().unwrap();
    let key = admin_key_in(dir.path()).await;
    let (server, _) = ServerProcess::start(dir.path(), &[]).await;
    call(&server.base, &key, "create_session", json!({"id": "console", "purpose": "browser test"})).await;
    let neighbour = call(
        &server.base,
        &key,
        "store_context",
        json!({"session_id": "console", "content": "The billing service runs on the blue cluster."}),
    )
    .await;
    let neighbour_id = neighbour["context"]["id"].as_str().unwrap().to_string();

    let page = reqwest::get(format!("{}/console/", server.base)).await.unwrap();
    let policy = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");

    let browser = Browser::start().await;
    browser.open(&format!("{}/console", server.base)).await;
    browser.until("the sign-in form", "return !!document.getElementById('api-key')").await;
    browser.type_into("#api-key", "cs_not_a_key").await;
    browser.click("#sign-in-form button[type=submit]").await;
    let refused = browser.until("a refused key", "return document.getElementById('status').textContent").await;
    assert!(refused.as_str().unwrap().starts_with("unauthenticated"), "{refused}");
    browser.type_into("#api-key", &key).await;
    browser.click("#sign-in-form button[type=submit]").await;
    browser.until("signed in", "return !document.getElementById('app').hidden").await;
    let who = browser.script("return document.getElementById('who').textContent").await;
    assert!(who.as_str().unwrap().contains("test-admin"), "{who}");
    let stored_anywhere = browser.script("return JSON.stringify(sessionStorage) + JSON.stringify(localStorage)").await;
    assert!(!stored_anywhere.as_str().unwrap().contains(&key), "the API key is never kept by the browser");
    browser
        .until("sessions listed", "return document.getElementById('session-list').textContent.includes('console')")
        .await;

    // Store a context through the form, then link it to the one stored over the API.
    browser.click("details.new summary").await;
    browser.type_into("#store-session", "console").await;
    browser.type_into("#store-content", "Quarterly invoices are generated by the billing service at midnight.").await;
    browser.click("#store-form button[type=submit]").await;
    let stored = browser
        .until(
            "stored",
            "const s = document.getElementById('status').textContent; return s.startsWith('Stored context') && s",
        )
        .await;
    let stored_id = stored.as_str().unwrap().trim_start_matches("Stored context ").trim_end_matches('.').to_string();
    call(
        &server.base,
        &key,
        "link_contexts",
        json!({"from_id": stored_id, "to_id": neighbour_id, "relation": "depends_on"}),
    )
    .await;

    // The search playground finds it with a score breakdown.
    browser.click("#tab-search").await;
    browser.type_into("#search-query", "when are invoices generated").await;
    browser.click("#search-form button[type=submit]").await;
    let first = browser
        .until("search hits", "const r = document.querySelector('#search-rows tr'); return r && r.textContent")
        .await;
    assert!(first.as_str().unwrap().contains("Quarterly invoices"), "{first}");
    let summary = browser.script("return document.getElementById('search-summary').textContent").await;
    assert!(summary.as_str().unwrap().contains("vector → lexical → fuzzy"), "{summary}");
    let scores = browser
        .script("return [...document.querySelectorAll('#search-rows tr:first-child td.num')].map(c => c.textContent)")
        .await;
    assert_eq!(scores.as_array().unwrap().len(), 4, "vector, lexical, fuzzy and final: {scores}");

    // Open the hit, then its graph: the linked context is a node beside it.
    browser.click("#search-rows tr:first-child button.link").await;
    browser.until("the context opens", "return !document.getElementById('context-detail').hidden").await;
    browser
        .until(
            "its relation is listed",
            "return document.getElementById('detail-related').textContent.includes('depends_on')",
        )
        .await;
    browser.click("#detail-graph").await;
    let nodes = browser.until("graph nodes", "return document.querySelectorAll('#graph g.node').length >= 2 && document.querySelectorAll('#graph g.node').length").await;
    assert_eq!(nodes, json!(2));
    assert_eq!(browser.script("return document.querySelectorAll('#graph line.edge').length").await, json!(1));
    let shot = browser.screenshot().await;
    assert!(shot.starts_with(b"\x89PNG\r\n\x1a\n") && shot.len() > 10_000, "a rendered page: {} bytes", shot.len());
    let out = std::env::var_os("CARGO_TARGET_TMPDIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    std::fs::write(out.join("console-graph.png"), &shot).unwrap();
    eprintln!("console screenshot: {}", out.join("console-graph.png").display());

    // Keyboard: a focused node recentres the graph on Enter; the tabs move with the arrow keys.
    browser.script("document.querySelector('#graph g.node:not(.centre)').focus()").await;
    browser.key("\u{E007}").await;
    browser.until("recentred", &format!("return document.getElementById('graph-id').value === '{neighbour_id}'")).await;
    browser.script("document.getElementById('tab-graph').focus()").await;
    browser.key("\u{E014}").await;
    let selected = browser
        .until("the next tab", "return document.getElementById('tab-state').getAttribute('aria-selected') === 'true'")
        .await;
    assert_eq!(selected, json!(true));
    let unlabelled = browser
        .script(
            "return [...document.querySelectorAll('input, select, textarea')].filter(i => !i.labels || i.labels.length === 0).map(i => i.id || i.name)",
        )
        .await;
    assert_eq!(unlabelled, json!([]), "every field has a label");

    // Agent state, the analyst query as a table, and health at a glance.
    call(&server.base, &key, "set_agent_state", json!({"key": "plan", "value": {"next": "ship the console"}})).await;
    browser.click("#tab-state").await;
    browser
        .until("agent state", "return document.getElementById('state-rows').textContent.includes('ship the console')")
        .await;
    browser.click("#tab-query").await;
    browser.click("#query-form button[type=submit]").await;
    let header = browser.until("query columns", "return document.getElementById('query-head').textContent").await;
    assert!(header.as_str().unwrap().contains("contexts"), "{header}");
    let counted = browser
        .script("return [...document.querySelectorAll('#query-rows tr td:last-child')].reduce((n, c) => n + Number(c.textContent), 0)")
        .await;
    assert_eq!(counted, json!(2), "the query's table counts both contexts");
    browser.click("#tab-health").await;
    let tiles = browser
        .until(
            "readiness",
            "const t = document.getElementById('health-cards').textContent; return t.includes('graph') && t",
        )
        .await;
    assert!(tiles.as_str().unwrap().starts_with("serviceready"), "{tiles}");
    let latency = browser
        .until(
            "tool latencies",
            "return document.getElementById('latency-rows').textContent.includes('search_context')",
        )
        .await;
    assert_eq!(latency, json!(true));
    std::fs::write(out.join("console-health.png"), browser.screenshot().await).unwrap();

    // A phone-sized window: nothing wider than the screen.
    browser.post("/window/rect", json!({"width": 390, "height": 844})).await;
    browser.click("#tab-search").await;
    let overflow =
        browser.script("return document.documentElement.scrollWidth - document.documentElement.clientWidth").await;
    assert!(overflow.as_i64().unwrap() <= 0, "horizontal overflow at 390 px: {overflow}");
    std::fs::write(out.join("console-phone.png"), browser.screenshot().await).unwrap();

    // Signing out forgets the token.
    browser.click("#sign-out").await;
    browser.until("signed out", "return document.getElementById('status').textContent === 'Signed out.'").await;
    assert_eq!(browser.script("return document.getElementById('app').hidden").await, json!(true));
    assert_eq!(browser.script("return sessionStorage.length").await, json!(0));
    let leftovers = browser.script("return document.getElementById('search-rows').children.length").await;
    assert_eq!(leftovers, json!(0), "nothing the last key saw stays in the page");
}
