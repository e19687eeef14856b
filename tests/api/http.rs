//! The HTTP tool endpoint, operations endpoints and OpenAPI document.

use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn tool_endpoint_round_trips_and_maps_errors_to_status_codes() {
    let app = spawn_app().await;
    let (status, _) = app.call_tool("create_session", json!({"id": "h1", "purpose": "http"})).await;
    assert_eq!(status, 200);
    let (status, stored) = app
        .call_tool(
            "store_context",
            json!({"session_id": "h1", "content": "Invoices are sent on the first of the month"}),
        )
        .await;
    assert_eq!(status, 200);
    let id = stored["context"]["id"].as_str().unwrap().to_string();
    let (status, found) =
        app.call_tool("search_context", json!({"query": "when do invoices go out", "session_id": "h1"})).await;
    assert_eq!(status, 200);
    assert_eq!(found["hits"][0]["context"]["id"], json!(id));
    let (status, _) = app.call_tool("get_context", json!({"id": id})).await;
    assert_eq!(status, 200);

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("store_context", json!({"session_id": "h1", "content": ""}), 400, "invalid_argument"),
        ("store_context", json!({"session_id": "h1"}), 422, "invalid_argument"),
        ("store_context", json!({"session_id": "h1", "content": "x", "unknown_field": 1}), 422, "invalid_argument"),
        ("get_context", json!({"id": uuid::Uuid::now_v7().to_string()}), 404, "not_found"),
        ("store_context", json!({"session_id": "missing", "content": "x"}), 404, "not_found"),
        ("update_context", json!({"id": id, "expected_version": 9, "content": "y"}), 409, "conflict"),
        ("create_session", json!({"id": "h1", "purpose": "again"}), 409, "conflict"),
        ("store_context", json!({"session_id": "h1", "content": "x".repeat(70_000)}), 413, "payload_too_large"),
        (
            "update_context",
            json!({"id": id, "content": "hijack", "agent_id": "someone-else"}),
            403,
            "permission_denied",
        ),
        ("no_such_tool", json!({}), 404, "not_found"),
    ];
    for (tool, arguments, expected_status, expected_code) in cases {
        let (status, body) = app.call_tool(tool, arguments.clone()).await;
        assert_eq!(status, expected_status, "{tool} {arguments}: {body}");
        assert_eq!(body["error"]["code"], json!(expected_code), "{tool}: {body}");
    }
    let (_, metrics) = app.call_tool_as(Some(&app.admin_key), "get_metrics", json!({})).await;
    assert_eq!(metrics["items"]["contexts"], json!(1), "rejected calls changed nothing");

    let response = app
        .http
        .post(format!("{}/mcp/tool/get_metrics", app.address))
        .bearer_auth(&app.key)
        .header("Content-Type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    app.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer_and_counters_move() {
    let app = spawn_app().await;
    let health = app.http.get(format!("{}/health", app.address)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = app.http.get(format!("{}/health/ready", app.address)).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    let scrape = |app: &crate::helpers::TestApp| {
        let request = app.http.get(format!("{}/metrics", app.address)).bearer_auth(&app.key);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let before = scrape(&app).await;
    assert!(before.contains("context_store_active_connections"));
    app.call_tool("create_session", json!({"id": "m1", "purpose": "metrics"})).await;
    app.call_tool("store_context", json!({"session_id": "m1", "content": "metrics move"})).await;
    app.call_tool("search_context", json!({"query": "metrics"})).await;
    let after = scrape(&app).await;
    let line = |text: &str, prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
    assert_eq!(
        line(&after, "context_store_tool_requests_total{status=\"ok\",tool=\"store_context\"}"),
        Some("context_store_tool_requests_total{status=\"ok\",tool=\"store_context\"} 1".to_string())
    );
    assert!(after.contains("context_store_tool_latency_seconds_bucket{tool=\"search_context\""));
    assert!(after.contains("context_store_embed_batch_size_count"));
    assert!(after.contains("context_store_search_cache_misses_total 1"));
    assert!(after.contains("context_store_embed_cache_hit_ratio"));
    // Store-wide item counts describe data a scoped caller may not see: only admins get them.
    assert!(!after.contains("context_store_items"), "{after}");
    let admin = app.http.get(format!("{}/metrics", app.address)).bearer_auth(&app.admin_key).send().await.unwrap();
    let admin = admin.text().await.unwrap();
    assert!(line(&admin, "context_store_items{kind=\"contexts\"}").unwrap().ends_with(" 1"));
    // An analyst key (query only, one session) reads the process-wide counters of get_metrics, not the items.
    let analyst = crate::helpers::create_key(&app.auth, "analyst", "query", Some(vec!["m1".into()])).await;
    let (status, summary) = app.call_tool_as(Some(&analyst), "get_metrics", json!({})).await;
    assert_eq!(status, 200, "{summary}");
    assert!(summary["search_cache_misses"].is_u64() && summary["items"].is_null(), "{summary}");
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_lists_every_tool_with_resolvable_schemas() {
    let app = spawn_app().await;
    let document: Value =
        app.http.get(format!("{}/openapi.json", app.address)).send().await.unwrap().json().await.unwrap();
    assert_eq!(document["openapi"], json!("3.1.0"));
    let paths = document["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 19);
    assert!(paths.contains_key("/mcp/tool/search_context"));
    let schemas = document["components"]["schemas"].as_object().unwrap();
    // Every reference points at a component that exists.
    let text = document.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().unwrap();
        let name = target.strip_prefix("#/components/schemas/").expect("refs point into components");
        assert!(schemas.contains_key(name), "missing component {name}");
    }
    app.stop().await;
}

#[tokio::test]
async fn load_beyond_the_concurrency_limit_is_shed_with_503_and_retry_after() {
    let app = crate::helpers::spawn_app_with(|settings| settings.server.max_concurrency = 0).await;
    let response =
        app.http.post(format!("{}/mcp/tool/list_sessions", app.address)).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("unavailable"));
    let health = app.http.get(format!("{}/health", app.address)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200, "operations endpoints are never shed");
    app.stop().await;
}

#[tokio::test]
async fn sigterm_drains_and_flushes_so_nothing_is_left_pending() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_context-store"))
        .arg("serve")
        .env("CTX__DATA_DIR", dir.path())
        .env("CTX__SERVER__PORT", port.to_string())
        .env("CTX__EMBEDDING__ASSETS_DIR", crate::helpers::assets_dir())
        .env("CTX__VECTOR__FLUSH_INTERVAL_MS", "3600000")
        .env("CTX__AUTH__ENABLED", "false")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    assert!(lines.by_ref().map_while(Result::ok).any(|l| l.contains("listening")), "server started");
    std::thread::spawn(move || lines.for_each(drop));
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let call = |tool: &str, body: Value| http.post(format!("{base}/mcp/tool/{tool}")).json(&body).send();
    assert_eq!(call("create_session", json!({"id": "g", "purpose": "graceful"})).await.unwrap().status(), 200);
    let stored: Value = call("store_context", json!({"session_id": "g", "content": "flushed on shutdown"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful exit, got {exit:?}");

    // Open the stores without start-up repair: only the shutdown flush can have cleared the journal.
    let settings = crate::helpers::test_settings(dir.path());
    let graph = context_store::app::open_graph(&settings).await.unwrap();
    let counts = graph.counts().await.unwrap();
    assert_eq!(counts.contexts, 1);
    assert_eq!(counts.pending_index, 0, "the final flush cleared the journal");
    let vectors = context_store::app::open_vectors(&settings).await.unwrap();
    let id = uuid::Uuid::parse_str(stored["context"]["id"].as_str().unwrap()).unwrap();
    assert_eq!(vectors.existing_ids(&[id]).await.unwrap(), vec![id]);
}

/// `tools/call` over MCP: a plain stateless request is answered by the direct path, the same request with
/// `_meta` by rmcp; both must give the same JSON-RPC answer, for results and for errors.
#[tokio::test]
async fn mcp_tools_call_answers_the_same_on_the_direct_path_and_through_rmcp() {
    let app = spawn_app().await;
    let (_, _) = app.call_tool("create_session", json!({"id": "same", "purpose": "equivalence"})).await;
    let (_, stored) =
        app.call_tool("store_context", json!({"session_id": "same", "content": "Deploys freeze on Fridays"})).await;
    let id = stored["context"]["id"].as_str().unwrap().to_string();
    let (_, other) = app
        .call_tool("store_context", json!({"session_id": "same", "content": "Hotfixes need two \"reviews\"\n"}))
        .await;
    let other_id = other["context"]["id"].as_str().unwrap().to_string();
    let (status, _) =
        app.call_tool("link_contexts", json!({"from_id": id, "to_id": other_id, "relation": "explains"})).await;
    assert_eq!(status, 200);
    let post = |params: Value, id_value: Value| {
        let body = json!({"jsonrpc": "2.0", "id": id_value, "method": "tools/call", "params": params});
        app.http
            .post(format!("{}/mcp", app.address))
            .bearer_auth(&app.key)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body)
            .send()
    };
    let calls = [
        json!({"name": "get_context", "arguments": {"id": id}}),
        json!({"name": "list_contexts", "arguments": {"session_id": "same"}}),
        json!({"name": "get_metrics"}),
        json!({"name": "get_related", "arguments": {"id": id, "both_directions": true}}),
        json!({"name": "search_context", "arguments": {"query": "hotfix reviews", "session_id": "same"}}),
        json!({"name": "get_context", "arguments": {"id": uuid::Uuid::now_v7().to_string()}}),
        json!({"name": "store_context", "arguments": {"session_id": "same"}}),
        json!({"name": "no_such_tool", "arguments": {}}),
    ];
    for (n, params) in calls.into_iter().enumerate() {
        let direct = post(params.clone(), json!(n)).await.unwrap();
        assert_eq!(direct.status(), 200);
        assert_eq!(direct.headers()["content-type"], "application/json");
        let direct: Value = direct.json().await.unwrap();
        let mut through_rmcp = params.clone();
        through_rmcp["_meta"] = json!({});
        let rmcp: Value = post(through_rmcp, json!(n)).await.unwrap().json().await.unwrap();
        let mut direct_cmp = direct.clone();
        let mut rmcp_cmp = rmcp.clone();
        // get_metrics counts the calls themselves and the second search is served from the cache:
        // compare their shape only.
        if params["name"] == "get_metrics" || params["name"] == "search_context" {
            for reply in [&mut direct_cmp, &mut rmcp_cmp] {
                reply["result"]["content"][0] = json!(null);
                reply["result"]["structuredContent"] = json!(null);
            }
        }
        assert_eq!(direct_cmp, rmcp_cmp, "{params}");
        if params["name"] == "search_context" || params["name"] == "get_related" {
            let links = direct["result"]["content"].as_array().unwrap().iter().filter(|c| c["type"] == "resource_link");
            assert!(links.count() >= 1, "a resource link per context named: {direct}");
        }
        assert_eq!(direct["id"], json!(n));
    }
    // It sits behind the same authentication as everything else.
    let anonymous = app
        .http
        .post(format!("{}/mcp", app.address))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "list_sessions"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // The direct path counts its calls like any other: the metric moved for get_context.
    let metrics = app.http.get(format!("{}/metrics", app.address)).bearer_auth(&app.admin_key).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(text.contains("context_store_tool_requests_total{status=\"ok\",tool=\"get_context\"} 2"), "{text}");
    assert!(text.contains("context_store_mcp_direct_tool_calls_total 8"), "the plain calls took the direct path");
}
