//! Real MCP clients (rmcp) over the real transports: stdio against the spawned binary, and Streamable
//! HTTP against an app on port 0, on each protocol version we support.

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{ConfigureCommandExt, StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

use crate::helpers::{assets_dir, spawn_app};

const TOOLS: &[&str] = &[
    "authenticate_agent",
    "query_graph",
    "create_session",
    "get_session",
    "list_sessions",
    "store_context",
    "get_context",
    "update_context",
    "delete_context",
    "list_contexts",
    "search_context",
    "link_contexts",
    "get_related",
    "set_agent_state",
    "get_agent_state",
    "list_agent_state",
    "delete_agent_state",
    "get_metrics",
];

type Client = RunningService<RoleClient, ClientConfig>;

fn client_config(version: ProtocolVersion) -> ClientConfig {
    ClientConfig::new(ClientCapabilities::default(), Implementation::new("context-store-tests", "0"))
        .with_protocol_version(version)
}

async fn call(client: &Client, name: &str, arguments: Value) -> CallToolResult {
    let arguments = arguments.as_object().cloned().unwrap_or_default();
    client
        .call_tool(CallToolRequestParams::new(name.to_string()).with_arguments(arguments))
        .await
        .expect("tools/call answered")
}

fn structured(result: &CallToolResult) -> &Value {
    assert_ne!(result.is_error, Some(true), "tool failed: {:?}", result.structured_content);
    result.structured_content.as_ref().expect("structuredContent")
}

fn error_code(result: &CallToolResult) -> String {
    assert_eq!(result.is_error, Some(true), "expected a tool error, got {:?}", result.structured_content);
    result.structured_content.as_ref().unwrap()["error"]["code"].as_str().unwrap().to_string()
}

/// The same conversation on any transport: tool list, round trip, conflict, bad arguments.
async fn exercise(client: &Client, session: &str) {
    let tools = client.list_all_tools().await.expect("tools/list");
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    let mut expected = TOOLS.to_vec();
    expected.sort();
    assert_eq!(names, expected);
    let query_graph = tools.iter().find(|t| t.name == "query_graph").unwrap();
    let description = query_graph.description.as_deref().unwrap_or_default();
    assert!(description.contains("Language: sql") && description.contains("contexts("), "{description}");
    for tool in &tools {
        assert!(tool.output_schema.is_some(), "{} has an output schema", tool.name);
        let annotations = tool.annotations.as_ref().expect("annotations");
        assert!(annotations.read_only_hint.is_some() && annotations.destructive_hint.is_some());
        let properties = tool.input_schema.get("properties").and_then(Value::as_object);
        for (field, schema) in properties.into_iter().flatten() {
            assert!(
                schema.get("description").is_some() || schema.get("$ref").is_some() || schema.get("allOf").is_some(),
                "{}.{field} is documented",
                tool.name
            );
        }
    }
    let search_tool = tools.iter().find(|t| t.name == "search_context").unwrap();
    assert_eq!(search_tool.annotations.as_ref().unwrap().read_only_hint, Some(true));

    structured(&call(client, "create_session", json!({"id": session, "purpose": "mcp test"})).await);
    let stored = call(
        client,
        "store_context",
        json!({
            "session_id": session, "content": "The staging database password rotates every Monday", "tags": ["ops"]
        }),
    )
    .await;
    let id = structured(&stored)["context"]["id"].as_str().unwrap().to_string();
    let found =
        call(client, "search_context", json!({"query": "when is the db password changed", "session_id": session}))
            .await;
    assert_eq!(structured(&found)["hits"][0]["context"]["id"], json!(id));
    let got = call(client, "get_context", json!({"id": id})).await;
    assert_eq!(structured(&got)["context"]["tags"], json!(["ops"]));

    let updated =
        call(client, "update_context", json!({"id": id, "expected_version": 1, "content": "now rotates on Tuesdays"}))
            .await;
    assert_eq!(structured(&updated)["version"], json!(2));
    let stale = call(client, "update_context", json!({"id": id, "expected_version": 1, "content": "lost"})).await;
    assert_eq!(error_code(&stale), "conflict");

    let listing = json!({"session_id": session, "limit": 200});
    let before =
        structured(&call(client, "list_contexts", listing.clone()).await)["contexts"].as_array().unwrap().len();
    assert_eq!(
        error_code(&call(client, "store_context", json!({"session_id": session, "content": ""})).await),
        "invalid_argument"
    );
    assert_eq!(error_code(&call(client, "store_context", json!({"session_id": session})).await), "invalid_argument");
    assert_eq!(
        error_code(&call(client, "store_context", json!({"session_id": session, "content": 5})).await),
        "invalid_argument"
    );
    assert_eq!(error_code(&call(client, "get_context", json!({"id": "not-a-uuid"})).await), "invalid_argument");
    assert_eq!(
        error_code(&call(client, "get_context", json!({"id": uuid::Uuid::now_v7().to_string()})).await),
        "not_found"
    );
    let after = structured(&call(client, "list_contexts", listing).await)["contexts"].as_array().unwrap().len();
    assert_eq!(before, after, "rejected calls changed nothing");
}

#[tokio::test]
async fn mcp_over_stdio_lists_every_tool_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_context-store")).configure(|cmd| {
        cmd.arg("stdio")
            .env("CTX__DATA_DIR", dir.path())
            .env("CTX__EMBEDDING__ASSETS_DIR", assets_dir())
            .env("RUST_LOG", "warn");
    });
    let client = client_config(ProtocolVersion::V_2025_06_18)
        .serve(TokioChildProcess::new(command).expect("spawn"))
        .await
        .expect("initialized over stdio");
    exercise(&client, "stdio-session").await;
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn mcp_over_streamable_http_works_on_every_supported_protocol_version() {
    let app = spawn_app().await;
    for (index, version) in
        [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_11_25, ProtocolVersion::V_2026_07_28]
            .into_iter()
            .enumerate()
    {
        let config =
            StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", app.address)).auth_header(app.key.clone());
        let transport = StreamableHttpClientTransport::from_config(config);
        let client = client_config(version.clone()).serve(transport).await.expect("initialized over HTTP");
        exercise(&client, &format!("http-session-{index}")).await;
        client.cancel().await.unwrap();
    }
    app.stop().await;
}
