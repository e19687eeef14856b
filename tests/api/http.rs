//! The HTTP tool endpoint, operations endpoints and OpenAPI document.

use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn tool_endpoint_round_trips_and_maps_errors_to_status_codes() {
    let app = spawn_app().await;
    let (status, _) = app
        .call_tool("create_session", json!({"id": "h1", "purpose": "http"}))
        .await;
    assert_eq!(status, 200);
    let (status, stored) = app
        .call_tool(
            "store_context",
            json!({"session_id": "h1", "content": "Invoices are sent on the first of the month"}),
        )
        .await;
    assert_eq!(status, 200);
    let id = stored["context"]["id"].as_str().unwrap().to_string();
    let (status, found) = app
        .call_tool(
            "search_context",
            json!({"query": "when do invoices go out", "session_id": "h1"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(found["hits"][0]["context"]["id"], json!(id));
    let (status, _) = app.call_tool("get_context", json!({"id": id})).await;
    assert_eq!(status, 200);

    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "store_context",
            json!({"session_id": "h1", "content": ""}),
            400,
            "invalid_argument",
        ),
        (
            "store_context",
            json!({"session_id": "h1"}),
            422,
            "invalid_argument",
        ),
        (
            "store_context",
            json!({"session_id": "h1", "content": "x", "unknown_field": 1}),
            422,
            "invalid_argument",
        ),
        (
            "get_context",
            json!({"id": uuid::Uuid::now_v7().to_string()}),
            404,
            "not_found",
        ),
        (
            "store_context",
            json!({"session_id": "missing", "content": "x"}),
            404,
            "not_found",
        ),
        (
            "update_context",
            json!({"id": id, "expected_version": 9, "content": "y"}),
            409,
            "conflict",
        ),
        (
            "create_session",
            json!({"id": "h1", "purpose": "again"}),
            409,
            "conflict",
        ),
        (
            "store_context",
            json!({"session_id": "h1", "content": "x".repeat(70_000)}),
            413,
            "payload_too_large",
        ),
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
        assert_eq!(
            body["error"]["code"],
            json!(expected_code),
            "{tool}: {body}"
        );
    }
    let (_, metrics) = app.call_tool("get_metrics", json!({})).await;
    assert_eq!(
        metrics["contexts"],
        json!(1),
        "rejected calls changed nothing"
    );

    let response = app
        .http
        .post(format!("{}/mcp/tool/get_metrics", app.address))
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
    let health = app
        .http
        .get(format!("{}/health", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = app
        .http
        .get(format!("{}/health/ready", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);

    let scrape = |app: &crate::helpers::TestApp| {
        let request = app.http.get(format!("{}/metrics", app.address));
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let before = scrape(&app).await;
    assert!(before.contains("context_store_active_connections"));
    app.call_tool("create_session", json!({"id": "m1", "purpose": "metrics"}))
        .await;
    app.call_tool(
        "store_context",
        json!({"session_id": "m1", "content": "metrics move"}),
    )
    .await;
    app.call_tool("search_context", json!({"query": "metrics"}))
        .await;
    let after = scrape(&app).await;
    let line = |text: &str, prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_string)
    };
    assert_eq!(
        line(
            &after,
            "context_store_tool_requests_total{status=\"ok\",tool=\"store_context\"}"
        ),
        Some(
            "context_store_tool_requests_total{status=\"ok\",tool=\"store_context\"} 1".to_string()
        )
    );
    assert!(after.contains("context_store_tool_latency_seconds_bucket{tool=\"search_context\""));
    assert!(after.contains("context_store_embed_batch_size_count"));
    assert!(after.contains("context_store_search_cache_misses_total 1"));
    assert!(
        line(&after, "context_store_items{kind=\"contexts\"}")
            .unwrap()
            .ends_with(" 1")
    );
    assert!(after.contains("context_store_embed_cache_hit_ratio"));
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_lists_every_tool_with_resolvable_schemas() {
    let app = spawn_app().await;
    let document: Value = app
        .http
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], json!("3.1.0"));
    let paths = document["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 16);
    assert!(paths.contains_key("/mcp/tool/search_context"));
    let schemas = document["components"]["schemas"].as_object().unwrap();
    // Every reference points at a component that exists.
    let text = document.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().unwrap();
        let name = target
            .strip_prefix("#/components/schemas/")
            .expect("refs point into components");
        assert!(schemas.contains_key(name), "missing component {name}");
    }
    app.stop().await;
}
