//! Live changes: the change feed over server-sent events (`GET /events`) and over MCP
//! (`resources/subscribe` over stdio), with the subscriber's scope applied.

use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
use serde_json::{Value, json};

use crate::helpers::{TestApp, create_key, spawn_app};

/// An open `GET /events` stream, read event by event.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(app: &TestApp, key: &str, query: &str) -> Result<Self, u16> {
        let response = app.http.get(format!("{}/events{query}", app.address)).bearer_auth(key).send().await.unwrap();
        if !response.status().is_success() {
            return Err(response.status().as_u16());
        }
        Ok(Self { response, buffer: String::new() })
    }

    /// Whether the server ends the stream within `limit` (events in between are read and dropped).
    async fn ends_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The next event's name and data (keep-alive comments skipped).
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field =
                    |name: &str| block.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_string()));
                if let (Some(event), Some(data)) = (field("event:"), field("data:")) {
                    return (event, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.response.chunk())
                .await
                .expect("an event within 20 s")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn tool(app: &TestApp, key: &str, name: &str, arguments: Value) -> Value {
    let (status, body) = app.call_tool_as(Some(key), name, arguments).await;
    assert_eq!(status, 200, "{name}: {body}");
    body
}

#[tokio::test]
async fn server_sent_events_tell_each_change_in_order_and_only_within_scope() {
    let app = spawn_app().await;
    for session in ["alpha", "beta"] {
        tool(&app, &app.key, "create_session", json!({"id": session, "purpose": "feed"})).await;
    }
    let outsider = create_key(&app.auth, "outsider", "read,write", Some(vec!["beta".into()])).await;
    assert_eq!(Events::open(&app, &outsider, "?session_id=alpha").await.err(), Some(404), "not its session");
    assert_eq!(Events::open(&app, &app.key, "?context_id=nope").await.err(), Some(400));
    let mut alpha = Events::open(&app, &app.key, "?session_id=alpha").await.unwrap();
    let mut everything_outsider_may_see = Events::open(&app, &outsider, "").await.unwrap();

    let first =
        tool(&app, &app.admin_key, "store_context", json!({"session_id": "alpha", "content": "first note"})).await;
    let first = first["context"]["id"].as_str().unwrap().to_string();
    let second =
        tool(&app, &app.admin_key, "store_context", json!({"session_id": "alpha", "content": "second note"})).await;
    let second = second["context"]["id"].as_str().unwrap().to_string();
    tool(&app, &app.admin_key, "update_context", json!({"id": first, "content": "first note, revised"})).await;
    tool(&app, &app.admin_key, "link_contexts", json!({"from_id": first, "to_id": second, "relation": "follows"}))
        .await;
    tool(&app, &app.admin_key, "delete_context", json!({"id": second})).await;
    let in_beta =
        tool(&app, &app.admin_key, "store_context", json!({"session_id": "beta", "content": "beta note"})).await;

    let mut seen = Vec::new();
    let mut last_seq = 0;
    for _ in 0..5 {
        let (kind, change) = alpha.next().await;
        let seq = change["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "in order");
        last_seq = seq;
        assert_eq!(change["context"]["session_id"], json!("alpha"));
        if kind == "deleted" {
            assert_eq!(change["context"]["content"], json!(""), "a delete tells who and where, not the content");
        }
        seen.push((kind, change["context"]["id"].as_str().unwrap().to_string()));
    }
    let expected =
        [("stored", &first), ("stored", &second), ("updated", &first), ("linked", &first), ("deleted", &second)];
    let expected: Vec<(String, String)> = expected.iter().map(|(k, id)| (k.to_string(), id.to_string())).collect();
    assert_eq!(seen, expected);

    // The outsider's first event is the one in its own session: nothing of alpha came before it.
    let (kind, change) = everything_outsider_may_see.next().await;
    assert_eq!((kind.as_str(), &change["context"]["id"]), ("stored", &in_beta["context"]["id"]));
    app.stop().await;
}

/// A client that keeps the `notifications/resources/updated` it receives.
struct Recorder {
    updated: tokio::sync::mpsc::UnboundedSender<String>,
}

impl rmcp::ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(ClientCapabilities::default(), Implementation::new("context-store-tests", "0"))
            .with_protocol_version(ProtocolVersion::V_2025_06_18)
    }

    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: rmcp::service::NotificationContext<rmcp::RoleClient>,
    ) {
        let _ = self.updated.send(params.uri);
    }
}

#[tokio::test]
#[allow(deprecated)] // resources/subscribe: what clients before 2026-07-28 use
async fn mcp_resources_subscribe_over_stdio_tells_of_changes_to_a_watched_session() {
    use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
    let dir = tempfile::tempdir().unwrap();
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_context-store")).configure(|cmd| {
        cmd.arg("stdio")
            .env("CTX__DATA_DIR", dir.path())
            .env("CTX__EMBEDDING__ASSETS_DIR", crate::helpers::assets_dir())
            .env("RUST_LOG", "warn");
    });
    let (updated, mut received) = tokio::sync::mpsc::unbounded_channel();
    let client = Recorder { updated }.serve(TokioChildProcess::new(command).expect("spawn")).await.expect("stdio");
    let call = async |name: &str, arguments: Value| {
        let params = rmcp::model::CallToolRequestParams::new(name.to_string())
            .with_arguments(arguments.as_object().cloned().unwrap_or_default());
        let result = client.call_tool(params).await.expect("tools/call");
        assert_ne!(result.is_error, Some(true), "{name}: {:?}", result.structured_content);
        result.structured_content.unwrap()
    };
    for session in ["watched", "quiet"] {
        call("create_session", json!({"id": session, "purpose": "feed"})).await;
    }
    let subscribe = |uri: &str| rmcp::model::SubscribeRequestParams::new(uri);
    client.subscribe(subscribe("session://watched")).await.expect("resources/subscribe");
    assert!(client.subscribe(subscribe("file:///not/ours")).await.is_err(), "only our resources can be watched");
    call("store_context", json!({"session_id": "quiet", "content": "elsewhere"})).await;
    let stored = call("store_context", json!({"session_id": "watched", "content": "here"})).await;
    let uri = tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("within 20 s").unwrap();
    assert_eq!(uri, "session://watched", "the quiet session's write told nothing");

    let context = format!("context://{}", stored["context"]["id"].as_str().unwrap());
    client.subscribe(subscribe(&context)).await.unwrap();
    client.unsubscribe(rmcp::model::UnsubscribeRequestParams::new("session://watched")).await.unwrap();
    call("update_context", json!({"id": stored["context"]["id"], "content": "here, revised"})).await;
    let uri = tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("within 20 s").unwrap();
    assert_eq!(uri, context, "the watched context; the session is no longer watched");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn mcp_subscriptions_listen_tells_of_changes_to_a_watched_session() {
    use rmcp::model::{ServerNotification, SubscriptionFilter};
    use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    let app = spawn_app().await;
    for session in ["watched", "quiet"] {
        tool(&app, &app.key, "create_session", json!({"id": session, "purpose": "feed"})).await;
    }
    let config =
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", app.address)).auth_header(app.key.clone());
    let lifecycle = ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] };
    let client = ClientConfig::default()
        .serve_with_lifecycle(StreamableHttpClientTransport::from_config(config), lifecycle)
        .await
        .expect("server/discover over HTTP");
    let filter = SubscriptionFilter::builder()
        .resource_subscription("session://watched")
        .resource_subscription("file:///not/ours")
        .build();
    let mut subscription = client.listen(filter).await.expect("subscriptions/listen acknowledged");
    assert_eq!(
        subscription.acknowledged().resource_subscriptions,
        Some(vec!["session://watched".to_string()]),
        "only our own resources are watched"
    );
    // Written through the HTTP tool endpoint, another connection.
    tool(&app, &app.key, "store_context", json!({"session_id": "quiet", "content": "elsewhere"})).await;
    tool(&app, &app.key, "store_context", json!({"session_id": "watched", "content": "here"})).await;
    let notification = tokio::time::timeout(Duration::from_secs(20), subscription.next())
        .await
        .expect("a notification within 20 s")
        .expect("the subscription is open")
        .expect("a notification");
    match notification {
        ServerNotification::ResourceUpdatedNotification(updated) => assert_eq!(updated.params.uri, "session://watched"),
        other => panic!("expected resources/updated, got {other:?}"),
    }
    subscription.cancel().await.unwrap();
    client.cancel().await.unwrap();

    // A key that may write but not read learns nothing of what changes: its listen is refused.
    let writer = create_key(&app.auth, "writer", "write", None).await;
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", app.address)).auth_header(writer);
    let lifecycle = ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] };
    let client = ClientConfig::default()
        .serve_with_lifecycle(StreamableHttpClientTransport::from_config(config), lifecycle)
        .await
        .expect("server/discover over HTTP");
    let filter = SubscriptionFilter::builder().resource_subscription("session://watched").build();
    if let Ok(mut subscription) = client.listen(filter).await {
        tool(&app, &app.key, "store_context", json!({"session_id": "watched", "content": "again"})).await;
        let next = tokio::time::timeout(Duration::from_secs(5), subscription.next()).await;
        assert!(
            !matches!(next, Ok(Ok(Some(ServerNotification::ResourceUpdatedNotification(_))))),
            "a key without read got a notification: {next:?}"
        );
    }
    client.cancel().await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn an_open_stream_ends_when_its_key_is_revoked() {
    let app = spawn_app().await;
    tool(&app, &app.key, "create_session", json!({"id": "alpha", "purpose": "feed"})).await;
    let key = create_key(&app.auth, "watcher", "read", None).await;
    let mut stream = Events::open(&app, &key, "?session_id=alpha").await.unwrap();
    tool(&app, &app.key, "store_context", json!({"session_id": "alpha", "content": "seen while the key is good"}))
        .await;
    assert_eq!(stream.next().await.0, "stored");
    let key_id = key.strip_prefix("cs_").and_then(|rest| rest.split('_').next()).unwrap();
    app.auth.revoke(key_id).await.unwrap();
    assert!(stream.ends_within(Duration::from_secs(10)).await, "a revoked key's stream is closed");
    app.stop().await;
}
