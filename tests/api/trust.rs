//! Trust: what a caller can neither see past its scope nor break, and failure handling that cannot stick.
//! Each test here was written against a confirmed probe of the service (versions, related `via`, who links,
//! the tool endpoint from a web page, unbounded filters, failed authentication, file permissions, the
//! first-start key in logs, request timeouts, cancelled writes).

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, assets_dir, create_key, eventually, spawn_app, spawn_app_with};

async fn ok(app: &TestApp, key: &str, tool: &str, arguments: Value) -> Value {
    let (status, body) = app.call_tool_as(Some(key), tool, arguments.clone()).await;
    assert_eq!(status, 200, "{tool} {arguments}: {body}");
    body
}

fn id(body: &Value) -> String {
    body["context"]["id"].as_str().or_else(|| body["id"].as_str()).unwrap().to_string()
}

#[tokio::test]
async fn previous_versions_are_shown_only_as_far_as_each_versions_visibility_allows() {
    let app = spawn_app().await;
    ok(&app, &app.admin_key, "create_session", json!({"id": "s1", "purpose": "versions"})).await;
    let alice = create_key(&app.auth, "alice", "read,write", None).await;
    let bob = create_key(&app.auth, "bob", "read,write", None).await;
    let draft = ok(
        &app,
        &alice,
        "store_context",
        json!({"session_id": "s1", "content": "draft: the merger closes on 3 May", "visibility": "private"}),
    )
    .await;
    let draft_id = id(&draft);
    let update = json!({"id": draft_id, "content": "The merger is announced", "visibility": "public"});
    ok(&app, &alice, "update_context", update).await;

    let for_bob = ok(&app, &bob, "get_context", json!({"id": draft_id, "include_versions": true})).await;
    assert_eq!(for_bob["context"]["content"], json!("The merger is announced"));
    let shown = for_bob["versions"].as_array().map_or(0, Vec::len);
    assert_eq!(shown, 0, "the private draft is not bob's to see: {for_bob}");
    assert!(!for_bob.to_string().contains("3 May"));
    let for_alice = ok(&app, &alice, "get_context", json!({"id": draft_id, "include_versions": true})).await;
    assert_eq!(for_alice["versions"][0]["content"], json!("draft: the merger closes on 3 May"), "its author sees it");
    let for_admin = ok(&app, &app.admin_key, "get_context", json!({"id": draft_id, "include_versions": true})).await;
    assert_eq!(for_admin["versions"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn related_contexts_never_name_or_pass_through_a_hidden_context() {
    let app = spawn_app().await;
    ok(&app, &app.admin_key, "create_session", json!({"id": "s1", "purpose": "walk"})).await;
    let alice = create_key(&app.auth, "alice", "read,write", None).await;
    let bob = create_key(&app.auth, "bob", "read,write", None).await;
    let store =
        |content: &str, visibility: &str| json!({"session_id": "s1", "content": content, "visibility": visibility});
    let start = id(&ok(&app, &alice, "store_context", store("alice starts here", "public")).await);
    let hidden = id(&ok(&app, &bob, "store_context", store("bob's private hub", "private")).await);
    let beyond = id(&ok(&app, &bob, "store_context", store("public page behind the hub", "public")).await);
    let next = id(&ok(&app, &alice, "store_context", store("alice's visible neighbour", "public")).await);
    let link = |from: &str, to: &str| json!({"from_id": from, "to_id": to, "relation": "next"});
    ok(&app, &app.admin_key, "link_contexts", link(&start, &hidden)).await;
    ok(&app, &bob, "link_contexts", link(&hidden, &beyond)).await;
    ok(&app, &alice, "link_contexts", link(&start, &next)).await;

    let walk = ok(&app, &alice, "get_related", json!({"id": start, "depth": 3})).await;
    let text = walk.to_string();
    assert!(!text.contains(&hidden), "the hidden context appears (as a hit or a via): {walk}");
    assert!(!text.contains(&beyond), "reached only through the hidden context: {walk}");
    let reached: Vec<&str> =
        walk["related"].as_array().unwrap().iter().map(|r| r["context"]["id"].as_str().unwrap()).collect();
    assert_eq!(reached, [next.as_str()]);
    // Bob, who may see his hub, walks through it.
    let for_bob = ok(&app, &bob, "get_related", json!({"id": start, "depth": 2})).await;
    assert!(for_bob.to_string().contains(&beyond), "{for_bob}");
    app.stop().await;
}

#[tokio::test]
async fn only_a_contexts_author_links_from_it_and_every_link_records_who_made_it() {
    let app = spawn_app().await;
    ok(&app, &app.admin_key, "create_session", json!({"id": "s1", "purpose": "links"})).await;
    let alice = create_key(&app.auth, "alice", "read,write", None).await;
    let bob = create_key(&app.auth, "bob", "read,write", None).await;
    let store = |content: &str| json!({"session_id": "s1", "content": content});
    let alices = id(&ok(&app, &alice, "store_context", store("alice's design note")).await);
    let bobs = id(&ok(&app, &bob, "store_context", store("bob's review")).await);

    let (status, body) = app
        .call_tool_as(Some(&bob), "link_contexts", json!({"from_id": alices, "to_id": bobs, "relation": "endorsed_by"}))
        .await;
    assert_eq!(status, 403, "bob cannot attach links to alice's context: {body}");
    assert_eq!(body["error"]["code"], json!("permission_denied"));
    ok(&app, &bob, "link_contexts", json!({"from_id": bobs, "to_id": alices, "relation": "reviews"})).await;

    let rows = ok(
        &app,
        &app.admin_key,
        "query_graph",
        json!({"query": "SELECT relation, created_by FROM relations ORDER BY relation"}),
    )
    .await;
    assert_eq!(rows["rows"], json!([["reviews", "bob"]]), "{rows}");
    app.stop().await;
}

#[tokio::test]
async fn the_tool_endpoint_refuses_foreign_pages_even_without_authentication() {
    let app = spawn_app_with(|settings| settings.auth.enabled = false).await;
    let url = format!("{}/mcp/tool/create_session", app.address);
    let body = json!({"id": "from-a-page", "purpose": "csrf"}).to_string();

    let foreign = app
        .http
        .post(&url)
        .header("Origin", "https://evil.example")
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status().as_u16(), 403);
    let plain = app.http.post(&url).header("Content-Type", "text/plain").body(body.clone()).send().await.unwrap();
    assert_eq!(plain.status().as_u16(), 415, "a text/plain beacon is no JSON call");
    assert_eq!(plain.json::<Value>().await.unwrap()["error"]["code"], json!("invalid_argument"));
    let rebound = app
        .http
        .post(&url)
        .header("Host", "evil.example:8080")
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status().as_u16(), 403, "a DNS-rebound Host is refused");
    let token = app.http.post(format!("{}/auth/token", app.address)).header("Origin", "https://evil.example");
    assert_eq!(token.body("{}").send().await.unwrap().status().as_u16(), 403);

    let (status, listed) = app.call_tool("list_sessions", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(listed["sessions"], json!([]), "none of the refused calls created anything: {listed}");
    let local = app
        .http
        .post(&url)
        .header("Origin", "http://localhost:3000")
        .header("Content-Type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(local.status().as_u16(), 200, "a local page and a JSON body are fine");
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_metadata_filter_is_an_invalid_argument() {
    let app = spawn_app().await;
    let metadata: serde_json::Map<String, Value> = (0..1300).map(|i| (format!("k{i}"), json!(i))).collect();
    for tool in ["list_contexts", "search_context"] {
        let arguments = match tool {
            "list_contexts" => json!({"metadata": metadata}),
            _ => json!({"query": "anything", "metadata": metadata}),
        };
        let (status, body) = app.call_tool(tool, arguments).await;
        assert_eq!(status, 400, "{tool}: {body}");
        assert_eq!(body["error"]["code"], json!("invalid_argument"));
    }
    app.stop().await;
}

#[tokio::test]
async fn failed_authentication_is_limited_per_address_and_token_exchange_and_readiness_count_as_load() {
    let app = spawn_app_with(|settings| {
        settings.server.auth_failures_per_second = 1;
        settings.server.auth_failure_burst = 5;
    })
    .await;
    // A client that authenticated before the flood keeps working from the same address: a NAT neighbour
    // must not lock it out.
    assert_eq!(app.call_tool("list_sessions", json!({})).await.0, 200);
    let mut statuses = Vec::new();
    for attempt in 0..40 {
        let wrong = format!("cs_000000000000_{attempt:064}");
        statuses.push(app.call_tool_as(Some(&wrong), "list_sessions", json!({})).await.0);
    }
    assert!(statuses[..5].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 30, "{statuses:?}");
    assert_eq!(app.call_tool("list_sessions", json!({})).await.0, 200, "the known client is let through");
    let limited = app.http.post(format!("{}/auth/token", app.address)).json(&json!({"api_key": "cs_000000000000_1"}));
    let limited = limited.send().await.unwrap();
    assert_eq!(limited.status().as_u16(), 429, "token exchange is limited too");
    assert!(limited.headers().get("retry-after").is_some());
    app.stop().await;

    // With no free request slot, readiness and token exchange are shed like any other request.
    let full = spawn_app_with(|settings| settings.server.max_concurrency = 0).await;
    let ready = full.http.get(format!("{}/health/ready", full.address)).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let token = full.http.post(format!("{}/auth/token", full.address)).json(&json!({"api_key": full.key}));
    assert_eq!(token.send().await.unwrap().status().as_u16(), 503);
    let live = full.http.get(format!("{}/health", full.address)).send().await.unwrap();
    assert_eq!(live.status().as_u16(), 200, "liveness stays outside the limit");
    full.stop().await;
}

#[tokio::test]
async fn a_request_timeout_answers_with_the_stable_error_body_and_retry_after() {
    let app = spawn_app_with(|settings| settings.server.request_timeout_ms = 300).await;
    let endless = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r";
    let response = app
        .http
        .post(format!("{}/mcp/tool/query_graph", app.address))
        .bearer_auth(&app.admin_key)
        .json(&json!({"query": endless, "timeout_ms": 60000}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("unavailable"), "{body}");
    app.stop().await;
}

/// Mode bits of a path, for the permission checks.
fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[tokio::test]
async fn the_data_dir_is_private_and_the_first_admin_key_stays_out_of_logs() {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = root.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = root.path().join("server.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_context-store"))
        .arg("serve")
        .env("CTX__DATA_DIR", &data)
        .env("CTX__SERVER__PORT", port.to_string())
        .env("CTX__EMBEDDING__ASSETS_DIR", assets_dir())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while !http.get(format!("{base}/health/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(started.elapsed() < Duration::from_secs(60), "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key_file = data.join(context_store::app::ADMIN_KEY_FILE);
    let key = std::fs::read_to_string(&key_file).expect("the admin key is handed over in a file").trim().to_string();
    let works = http.post(format!("{base}/mcp/tool/list_sessions")).bearer_auth(&key).json(&json!({}));
    assert_eq!(works.send().await.unwrap().status().as_u16(), 200, "the handed-over key works");
    let _ = child.kill();
    let _ = child.wait();

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains(&key), "the admin key is in the log:\n{logged}");
    assert!(logged.contains(&key_file.display().to_string()), "the log names the key file:\n{logged}");
    assert!(!logged.contains('\u{1b}'), "a log written to a file has no terminal escapes:\n{logged}");
    assert!(!logged.contains("Feature flags not initialized"), "{logged}");
    assert!(!logged.contains("MULTI_MMAP_SUPPORT_CHECK_RESULT"), "{logged}");

    assert_eq!(mode(&data), 0o700, "the data dir");
    for file in ["graph.sqlite3", "keys.sqlite3", "jwt.secret", context_store::app::ADMIN_KEY_FILE] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
}

/// A service on real embedded stores whose vector writes can be slowed, with maintenance as configured.
async fn core_with(
    dir: &std::path::Path,
    adjust: impl FnOnce(&mut context_store::config::Settings),
) -> (context_store::app::Core, std::sync::Arc<crate::helpers::SwitchableVectors>, context_store::config::Settings) {
    let mut settings = crate::helpers::test_settings(dir);
    settings.server.port = 0;
    adjust(&mut settings);
    let metrics = std::sync::Arc::new(context_store::metrics::Metrics::new());
    let graph = context_store::app::open_graph(&settings).await.unwrap();
    let vectors = std::sync::Arc::new(crate::helpers::SwitchableVectors::new(
        context_store::app::open_vectors(&settings).await.unwrap(),
    ));
    let embedder: std::sync::Arc<dyn context_store::embed::Embedder> = std::sync::Arc::new(
        context_store::embed::CachedEmbedder::new(crate::helpers::model(), 10_000, metrics.clone()),
    );
    let core = context_store::app::Core::assemble(&settings, graph, vectors.clone(), embedder, metrics).await.unwrap();
    (core, vectors, settings)
}

/// A filter that selects every live context.
fn everything() -> context_store::domain::ContextFilter {
    context_store::domain::ContextFilter {
        scope: context_store::domain::ReadScope { admin: true, ..Default::default() },
        now: context_store::domain::Timestamp::now(),
        ..Default::default()
    }
}

/// Graph and vector store hold the same live contexts (ids and versions), and search returns what get does.
async fn assert_stores_agree(service: &context_store::service::ContextService) {
    let everything = everything();
    let mut graph: Vec<(uuid::Uuid, i64)> = service
        .graph()
        .list_contexts(&everything, None, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|c| (c.id, c.version))
        .collect();
    let mut vectors: Vec<(uuid::Uuid, i64)> =
        service.vectors().scroll(&everything, 10_000).await.unwrap().iter().map(|c| (c.id, c.version)).collect();
    graph.sort();
    vectors.sort();
    assert_eq!(graph, vectors, "graph and vector store disagree");
    let admin = context_store::auth::Principal::admin("checker");
    for context in service.graph().list_contexts(&everything, None, 10_000).await.unwrap() {
        let request = context_store::service::SearchRequest {
            query: context.content.clone(),
            limit: Some(50),
            ..Default::default()
        };
        let found = service.search(&admin, request).await.unwrap();
        let hit = found.hits.iter().find(|h| h.context.id == context.id).expect("search finds every live context");
        assert_eq!(hit.context, context, "search serves what get serves");
    }
}

#[tokio::test]
async fn a_write_whose_client_goes_away_still_completes_in_both_stores() {
    let dir = tempfile::tempdir().unwrap();
    // No repair while running: only running writes to completion can keep the stores together here.
    let (core, vectors, settings) = core_with(dir.path(), |s| s.graph.repair_interval_ms = 3_600_000).await;
    let service = core.service.clone();
    let key = create_key(&core.auth, "writer", "read,write", None).await;
    let app = context_store::app::App::build_with(settings, core).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let admin = context_store::auth::Principal::admin("setup");
    let session = context_store::service::CreateSessionRequest {
        id: Some("s1".into()),
        purpose: "cancel".into(),
        ..Default::default()
    };
    service.create_session(&admin, session).await.unwrap();
    let as_writer = context_store::auth::Principal::local_trusted("writer");
    let kept = service
        .store_context(
            &as_writer,
            context_store::service::StoreContextRequest {
                session_id: "s1".into(),
                content: "kept as it was".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    // Vector writes take 400 ms; clients give up after 150 ms, after the graph write.
    vectors.write_delay_ms.store(400, std::sync::atomic::Ordering::SeqCst);
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(150)).build().unwrap();
    let mut calls = Vec::new();
    for n in 0..12 {
        let (tool, arguments) = match n % 3 {
            0 | 1 => (
                "store_context",
                json!({"session_id": "s1", "content": format!("cancelled write number {n} about tide tables")}),
            ),
            _ => ("update_context", json!({"id": kept.context.id, "content": format!("kept, changed by call {n}")})),
        };
        let request = impatient.post(format!("{base}/mcp/tool/{tool}")).bearer_auth(&key).json(&arguments);
        calls.push(tokio::spawn(request.send()));
    }
    for call in calls {
        assert!(call.await.unwrap().is_err(), "the client gave up before the answer");
    }
    vectors.write_delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    // Done: 8 new contexts beside the kept one in both stores, and the kept one at version 5 (its four
    // updates run one after the other) in both.
    eventually(Duration::from_secs(30), "the detached writes finished", async || {
        let counts = service.graph().counts().await.unwrap();
        let graph_version = service.graph().get_context(kept.context.id).await.unwrap().map(|c| c.version);
        let vector_version = service
            .vectors()
            .scroll(&everything(), 100)
            .await
            .unwrap()
            .into_iter()
            .find_map(|c| (c.id == kept.context.id).then_some(c.version));
        counts.contexts == 9
            && service.vectors().count().await.unwrap() == 9
            && graph_version == Some(5)
            && vector_version == Some(5)
    })
    .await;
    assert_stores_agree(&service).await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn writes_cancelled_between_the_stores_are_repaired_while_the_service_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (core, vectors, _) = core_with(dir.path(), |s| s.graph.repair_interval_ms = 200).await;
    let service = core.service.clone();
    let writer = context_store::auth::Principal::local_trusted("writer");
    let session = context_store::service::CreateSessionRequest {
        id: Some("s1".into()),
        purpose: "cancel".into(),
        ..Default::default()
    };
    service.create_session(&writer, session).await.unwrap();
    let mut rng = fastrand::Rng::with_seed(17);
    // The service called as a library: futures dropped at random points, many of them between the graph
    // write and the slow vector write.
    vectors.write_delay_ms.store(300, std::sync::atomic::Ordering::SeqCst);
    // At least 16 writes, and more until one has reached the graph: on a busy machine the embedding alone
    // can outlast every budget.
    for n in 0.. {
        let request = context_store::service::StoreContextRequest {
            session_id: "s1".into(),
            content: format!("interrupted note {n}: the ferry leaves at {} o'clock", n + 1),
            ..Default::default()
        };
        let budget = Duration::from_millis(rng.u64(1..250));
        let _ = tokio::time::timeout(budget, service.store_context(&writer, request)).await;
        if n >= 15 && (n >= 400 || service.graph().counts().await.unwrap().contexts > 0) {
            break;
        }
    }
    vectors.write_delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    let in_graph = service.graph().counts().await.unwrap().contexts;
    assert!(in_graph > 0, "some writes reached the graph before they were cancelled");
    eventually(Duration::from_secs(30), "the journal was repaired without a restart", async || {
        service.graph().counts().await.unwrap().pending_index == 0
            && service.vectors().count().await.unwrap() == in_graph
    })
    .await;
    assert_stores_agree(&service).await;
    assert!(service.metrics().journal_repairs.get() > 0, "the running repair did it");
    core.shutdown().await;
}

#[tokio::test]
async fn readiness_runs_the_model_itself_not_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let settings = crate::helpers::test_settings(dir.path());
    let metrics = std::sync::Arc::new(context_store::metrics::Metrics::new());
    let model = std::sync::Arc::new(crate::helpers::SwitchableEmbedder {
        inner: crate::helpers::model(),
        failing: std::sync::atomic::AtomicBool::new(false),
    });
    let cached = std::sync::Arc::new(context_store::embed::CachedEmbedder::new(model.clone(), 1000, metrics.clone()));
    let core = context_store::app::Core::start_with(&settings, cached, metrics).await.unwrap();
    assert!(core.service.ready().await.ready);
    model.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let report = core.service.ready().await;
    assert!(!report.ready, "a dead model must not look alive through the cache");
    let embedder = report.backends.iter().find(|b| b.role == "embedder").unwrap();
    assert!(!embedder.ok, "{report:?}");
    assert!(report.backends.iter().filter(|b| b.role != "embedder").all(|b| b.ok));
    model.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(core.service.ready().await.ready, "and ready again once it answers");
    core.shutdown().await;
}

#[tokio::test]
async fn long_reranks_leave_the_async_workers_free() {
    let app = spawn_app_with(|settings| {
        settings.server.rate_limit_per_second = 100_000;
        settings.server.rate_limit_burst = 100_000;
    })
    .await;
    ok(&app, &app.admin_key, "create_session", json!({"id": "s1", "purpose": "rerank"})).await;
    // Many texts of many distinct short words, and long queries of other words: each rerank compares the
    // query's first 32 distinct words with up to 1 024 distinct words of every candidate.
    let mut rng = fastrand::Rng::with_seed(5);
    let word = |rng: &mut fastrand::Rng, letters: std::ops::Range<usize>| {
        (0..rng.usize(letters)).map(|_| rng.alphabetic().to_ascii_lowercase()).collect::<String>()
    };
    for _ in 0..5 {
        let mut writes = Vec::new();
        for _ in 0..200 {
            let text: Vec<String> = (0..1000).map(|_| word(&mut rng, 3..6)).collect();
            writes.push(app.call_tool("store_context", json!({"session_id": "s1", "content": text.join(" ")})));
        }
        for (status, body) in futures::future::join_all(writes).await {
            assert_eq!(status, 200, "{body}");
        }
    }
    // 2 000 characters at most: about 220 words.
    let query: Vec<String> = (0..215).map(|_| word(&mut rng, 3..6)).collect();
    let query = query.join(" ");
    let searches: Vec<_> = (0..6)
        .map(|n| {
            let (http, url, key) =
                (app.http.clone(), format!("{}/mcp/tool/search_context", app.address), app.key.clone());
            // vector_weight 0: no candidate can be left out of the rerank by its vector score.
            let arguments =
                json!({"query": format!("{query} {n}"), "candidates": 1000, "limit": 5, "vector_weight": 0.0});
            tokio::spawn(async move { http.post(url).bearer_auth(key).json(&arguments).send().await.unwrap().status() })
        })
        .collect();
    // Embedding the queries and the vector stage take a few hundred milliseconds here; each rerank of 1 000
    // texts over a second more.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let health = app.http.get(format!("{}/health", app.address)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // An ordering, not a timing: the health check is answered while every search is still reranking.
    let finished = searches.iter().filter(|s| s.is_finished()).count();
    assert_eq!(finished, 0, "the health check waited for reranks to finish");
    for search in searches {
        assert_eq!(search.await.unwrap().as_u16(), 200);
    }
    app.stop().await;
}
