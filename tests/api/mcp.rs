//! Real MCP clients (rmcp) over the real transports: stdio against the spawned binary, and Streamable
//! HTTP against an app on port 0, on each protocol version we support.

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ContentBlock, GetPromptRequestParams,
    Implementation, ProtocolVersion, ReadResourceRequestParams, ResourceContents,
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
    "recall_agent_state",
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
    primitives(client, session, &id, &stored).await;
}

/// The text of a resource read.
async fn read_text(client: &Client, uri: &str) -> Result<Value, String> {
    let read = client.read_resource(ReadResourceRequestParams::new(uri)).await.map_err(|e| e.to_string())?;
    match &read.contents[0] {
        ResourceContents::TextResourceContents { text, uri: read_uri, .. } => {
            assert_eq!(read_uri, uri);
            Ok(serde_json::from_str(text).unwrap())
        }
        other => panic!("a JSON text resource, not {other:?}"),
    }
}

/// Resources, resource links, prompts and completions, after `exercise` stored context `id` in `session`.
async fn primitives(client: &Client, session: &str, id: &str, stored: &CallToolResult) {
    let uri = format!("context://{id}");
    let linked = stored.content.iter().any(|block| matches!(block, ContentBlock::ResourceLink(r) if r.uri == uri));
    assert!(linked, "store_context links the stored context: {:?}", stored.content);

    let templates = client.list_all_resource_templates().await.expect("resources/templates/list");
    let mut patterns: Vec<&str> = templates.iter().map(|t| t.uri_template.as_str()).collect();
    patterns.sort();
    assert_eq!(patterns, ["context://{id}", "session://{session_id}", "state://{agent_id}/{key}"]);
    let resources = client.list_all_resources().await.expect("resources/list, every page");
    let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    assert!(uris.contains(&uri.as_str()) && uris.contains(&format!("session://{session}").as_str()), "{uris:?}");

    let context = read_text(client, &uri).await.unwrap();
    assert_eq!((context["id"].as_str(), context["content"].as_str()), (Some(id), Some("now rotates on Tuesdays")));
    let whole = read_text(client, &format!("session://{session}")).await.unwrap();
    assert_eq!(whole["session"]["id"], json!(session));
    assert_eq!(whole["recent_contexts"][0]["id"], json!(id));
    structured(&call(client, "set_agent_state", json!({"key": "plan/next-step", "value": {"step": 3}})).await);
    let me = structured(&call(client, "get_agent_state", json!({"key": "plan/next-step"})).await)["state"]["agent_id"]
        .as_str()
        .unwrap()
        .to_string();
    let state = read_text(client, &format!("state://{me}/plan%2Fnext-step")).await.unwrap();
    assert_eq!(state["value"], json!({"step": 3}));
    assert!(read_text(client, &format!("context://{}", uuid::Uuid::now_v7())).await.is_err(), "unknown id");
    assert!(read_text(client, "nothing://here").await.is_err(), "unknown scheme");

    let prompts = client.list_all_prompts().await.expect("prompts/list");
    let mut names: Vec<&str> = prompts.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["hand_over_task", "resume_session"]);
    let arguments = json!({"session_id": session}).as_object().unwrap().clone();
    let prompt = client
        .get_prompt(GetPromptRequestParams::new("resume_session").with_arguments(arguments))
        .await
        .expect("prompts/get");
    let text = serde_json::to_string(&prompt.messages).unwrap();
    assert!(text.contains("now rotates on Tuesdays") && text.contains(&uri), "{text}");
    assert!(client.get_prompt(GetPromptRequestParams::new("resume_session")).await.is_err(), "session_id required");

    let prefix: String = session.chars().take(3).collect();
    let sessions = client.complete_prompt_argument("resume_session", "session_id", prefix, None).await.unwrap();
    assert!(sessions.values.iter().any(|v| v == session), "{:?}", sessions.values);
    let agents = client.complete_prompt_argument("hand_over_task", "to_agent", "", None).await.unwrap();
    assert!(agents.values.contains(&me), "{:?}", agents.values);
    let keys = client.complete_resource_argument("state://{agent_id}/{key}", "key", "plan/", None).await.unwrap();
    assert_eq!(keys.values, ["plan/next-step"]);
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

#[tokio::test]
async fn resources_prompts_and_completions_show_nothing_outside_the_callers_scope() {
    let app = spawn_app().await;
    let connect = async |key: &str| {
        let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", app.address)).auth_header(key);
        client_config(ProtocolVersion::V_2025_11_25)
            .serve(StreamableHttpClientTransport::from_config(config))
            .await
            .expect("initialized over HTTP")
    };
    let owner = connect(&app.key).await;
    for session in ["alpha", "beta"] {
        structured(&call(&owner, "create_session", json!({"id": session, "purpose": "scope"})).await);
    }
    let stored = call(&owner, "store_context", json!({"session_id": "alpha", "content": "alpha's launch codes"})).await;
    let id = structured(&stored)["context"]["id"].as_str().unwrap().to_string();

    let key = crate::helpers::create_key(&app.auth, "outsider", "read,write", Some(vec!["beta".into()])).await;
    let outsider = connect(&key).await;
    assert!(read_text(&outsider, &format!("context://{id}")).await.is_err(), "a context of another session");
    assert!(read_text(&outsider, "session://alpha").await.is_err(), "another session");
    let uris: Vec<String> = outsider.list_all_resources().await.unwrap().into_iter().map(|r| r.uri).collect();
    assert!(uris.contains(&"session://beta".to_string()), "{uris:?}");
    assert!(!uris.iter().any(|u| u.contains("alpha") || u.contains(&id)), "{uris:?}");
    let sessions = outsider.complete_prompt_argument("resume_session", "session_id", "", None).await.unwrap();
    assert_eq!(sessions.values, ["beta"]);
    let arguments = json!({"session_id": "alpha"}).as_object().unwrap().clone();
    let prompt = GetPromptRequestParams::new("resume_session").with_arguments(arguments);
    assert!(outsider.get_prompt(prompt).await.is_err(), "no prompt built from another session");
    owner.cancel().await.unwrap();
    outsider.cancel().await.unwrap();
    app.stop().await;
}
