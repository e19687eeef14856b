//! The permission matrix: each tool, called by each kind of principal, over both the HTTP tool endpoint
//! and MCP Streamable HTTP, has one expected outcome. Plus tokens, revocation, Origin and rate limits.

use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

use crate::helpers::{TestApp, create_key, spawn_app, spawn_app_with};

/// What a call must produce.
#[derive(Debug, Clone)]
enum Expect {
    Ok,
    /// Succeeds and the result mentions this text (an id).
    OkWith(String),
    /// Succeeds and the result never mentions this text.
    OkWithout(String),
    /// Fails with this error code.
    Code(&'static str),
}

const PRINCIPALS: &[&str] = &["alice", "alice_jwt", "bob", "carol", "reader", "admin"];
const INVALID: &[&str] = &["none", "expired", "wrong_audience", "tampered", "revoked"];

struct World {
    bearers: Vec<(&'static str, Option<String>)>,
    public: String,
    private: String,
    admin_only: String,
}

fn bearer<'a>(world: &'a World, name: &str) -> Option<&'a str> {
    world.bearers.iter().find(|(n, _)| *n == name).and_then(|(_, b)| b.as_deref())
}

async fn ok_body(app: &TestApp, key: &str, tool: &str, arguments: Value) -> Value {
    let (status, body) = app.call_tool_as(Some(key), tool, arguments).await;
    assert_eq!(status, 200, "{tool}: {body}");
    body
}

/// Sessions s1 and s2; alice, bob and a read-only reader limited to s1; carol limited to s2; an admin.
/// Alice owns a public and a private context and some state; the admin owns an admin_only context.
async fn build_world(app: &TestApp) -> World {
    let admin = app.admin_key.clone();
    for session in ["s1", "s2"] {
        ok_body(app, &admin, "create_session", json!({"id": session, "purpose": "matrix"})).await;
    }
    let s1 = Some(vec!["s1".to_string()]);
    let alice = create_key(&app.auth, "alice", "read,write", s1.clone()).await;
    let bob = create_key(&app.auth, "bob", "read,write", s1.clone()).await;
    let carol = create_key(&app.auth, "carol", "read,write", Some(vec!["s2".to_string()])).await;
    let reader = create_key(&app.auth, "reader", "read", s1.clone()).await;
    let revoked = create_key(&app.auth, "mallory", "read,write", None).await;

    let store =
        |content: &str, visibility: &str| json!({"session_id": "s1", "content": content, "visibility": visibility});
    let public = ok_body(app, &alice, "store_context", store("The shared runbook lives in the wiki", "public")).await;
    let private =
        ok_body(app, &alice, "store_context", store("Alice's private note: the vault PIN is 4471", "private")).await;
    let admin_only = ok_body(app, &admin, "store_context", store("Payroll runs on the 25th", "admin_only")).await;
    ok_body(app, &alice, "set_agent_state", json!({"key": "plan", "value": {"step": 1}})).await;

    let token =
        app.http.post(format!("{}/auth/token", app.address)).json(&json!({"api_key": alice})).send().await.unwrap();
    assert_eq!(token.status().as_u16(), 200);
    let jwt = token.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();

    let issuer = app.auth.tokens();
    let claims = |aud: &str, exp_offset: i64| {
        let now = context_store::domain::Timestamp::now().millis() / 1000;
        let key_id = alice.split('_').nth(1).unwrap().to_string();
        context_store::auth::Claims {
            sub: "alice".into(),
            kid: key_id,
            agent_type: "test".into(),
            perms: vec!["read".into(), "write".into()],
            aud: aud.into(),
            iss: "context-store".into(),
            iat: now - 3600,
            exp: now + exp_offset,
        }
    };
    let expired = issuer.sign(&claims("context-store", -60)).unwrap();
    let wrong_audience = issuer.sign(&claims("another-service", 600)).unwrap();
    let mut tampered = jwt.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let revoked_key_id = revoked.split('_').nth(1).unwrap().to_string();
    app.auth.revoke(&revoked_key_id).await.unwrap();

    let id = |body: &Value| body["context"]["id"].as_str().unwrap().to_string();
    World {
        bearers: vec![
            ("alice", Some(alice)),
            ("alice_jwt", Some(jwt)),
            ("bob", Some(bob)),
            ("carol", Some(carol)),
            ("reader", Some(reader)),
            ("admin", Some(admin)),
            ("none", None),
            ("expired", Some(expired)),
            ("wrong_audience", Some(wrong_audience)),
            ("tampered", Some(tampered)),
            ("revoked", Some(revoked)),
        ],
        public: id(&public),
        private: id(&private),
        admin_only: id(&admin_only),
    }
}

/// The matrix: (tool, arguments, outcome for each of PRINCIPALS in order).
fn cases(world: &World, round: &str) -> Vec<(&'static str, Value, [Expect; 6])> {
    use Expect::*;
    let (p, q, a) = (&world.public, &world.private, &world.admin_only);
    let nf = || Code("not_found");
    let pd = || Code("permission_denied");
    let secret = "Alice's private note: the vault PIN is 4471";
    vec![
        ("get_context", json!({"id": p}), [Ok, Ok, Ok, nf(), Ok, Ok]),
        ("get_context", json!({"id": q}), [Ok, Ok, nf(), nf(), nf(), Ok]),
        ("get_context", json!({"id": a}), [nf(), nf(), nf(), nf(), nf(), Ok]),
        (
            "search_context",
            json!({"query": secret}),
            [
                OkWith(q.clone()),
                OkWith(q.clone()),
                OkWithout(q.clone()),
                OkWithout(p.clone()),
                OkWithout(q.clone()),
                OkWith(q.clone()),
            ],
        ),
        (
            "search_context",
            json!({"query": "Payroll runs on the 25th"}),
            [
                OkWithout(a.clone()),
                OkWithout(a.clone()),
                OkWithout(a.clone()),
                OkWithout(a.clone()),
                OkWithout(a.clone()),
                OkWith(a.clone()),
            ],
        ),
        (
            "list_contexts",
            json!({"session_id": "s1", "limit": 200}),
            [
                OkWith(q.clone()),
                OkWith(q.clone()),
                OkWithout(q.clone()),
                OkWithout(p.clone()),
                OkWithout(q.clone()),
                OkWith(a.clone()),
            ],
        ),
        (
            "store_context",
            json!({"session_id": "s1", "content": format!("note written in round {round}")}),
            [Ok, Ok, Ok, nf(), pd(), Ok],
        ),
        ("update_context", json!({"id": p, "tags": [round]}), [Ok, Ok, pd(), nf(), pd(), Ok]),
        ("get_agent_state", json!({"key": "plan", "agent_id": "alice"}), [Ok, Ok, pd(), pd(), pd(), Ok]),
        ("get_agent_state", json!({"key": "plan"}), [Ok, Ok, nf(), nf(), nf(), nf()]),
        ("set_agent_state", json!({"key": "x", "value": 1, "agent_id": "alice"}), [Ok, Ok, pd(), pd(), pd(), Ok]),
        ("set_agent_state", json!({"key": "x", "value": 1, "session_id": "s2"}), [nf(), nf(), nf(), Ok, pd(), Ok]),
        // Only the source's author (or an admin) links from it: bob sees p but did not write it.
        ("link_contexts", json!({"from_id": p, "to_id": q, "relation": "see_also"}), [Ok, Ok, pd(), nf(), pd(), Ok]),
        (
            "get_related",
            json!({"id": p, "both_directions": true}),
            [OkWith(q.clone()), OkWith(q.clone()), OkWithout(q.clone()), nf(), OkWithout(q.clone()), OkWith(q.clone())],
        ),
        ("get_session", json!({"session_id": "s2"}), [nf(), nf(), nf(), Ok, nf(), Ok]),
        (
            "list_sessions",
            json!({}),
            [
                OkWithout("s2".into()),
                OkWithout("s2".into()),
                OkWithout("s2".into()),
                OkWithout("s1".into()),
                OkWithout("s2".into()),
                OkWith("s2".into()),
            ],
        ),
        ("create_session", json!({"id": format!("new-{round}"), "purpose": "x"}), [pd(), pd(), pd(), pd(), pd(), Ok]),
        (
            // Process-wide cache counters move with other agents' requests: only for query and admin.
            "get_metrics",
            json!({}),
            [
                OkWithout("cache".into()),
                OkWithout("cache".into()),
                OkWithout("items".into()),
                OkWithout("cache".into()),
                OkWithout("cache".into()),
                OkWith("embed_cache_hits".into()),
            ],
        ),
    ]
}

fn check(expect: &Expect, outcome: &Result<Value, String>, context: &str) {
    match (expect, outcome) {
        (Expect::Ok, Ok(_)) => {}
        (Expect::OkWith(text), Ok(body)) => {
            assert!(body.to_string().contains(text.as_str()), "{context}: lacks {text}: {body}")
        }
        (Expect::OkWithout(text), Ok(body)) => {
            assert!(!body.to_string().contains(text.as_str()), "{context}: reveals {text}: {body}")
        }
        (Expect::Code(code), Err(got)) => assert_eq!(got, code, "{context}"),
        (expected, got) => panic!("{context}: expected {expected:?}, got {got:?}"),
    }
}

/// A fresh delete target per principal: a private context of alice's.
async fn delete_outcomes(app: &TestApp, world: &World, call: impl AsyncFn(&str, &str, Value) -> Result<Value, String>) {
    use Expect::*;
    let alice = bearer(world, "alice").unwrap();
    let expected = [Ok, Ok, Code("not_found"), Code("not_found"), Code("permission_denied"), Ok];
    for (principal, expect) in PRINCIPALS.iter().zip(expected) {
        let content = format!("disposable note for {principal} {}", uuid::Uuid::now_v7());
        let stored = ok_body(
            app,
            alice,
            "store_context",
            json!({"session_id": "s1", "content": content, "visibility": "private"}),
        )
        .await;
        let id = stored["context"]["id"].as_str().unwrap().to_string();
        let outcome = call(principal, "delete_context", json!({"id": id})).await;
        check(&expect, &outcome, &format!("{principal} delete_context"));
    }
}

async fn http_outcome(app: &TestApp, bearer: Option<&str>, tool: &str, arguments: Value) -> Result<Value, String> {
    let (status, body) = app.call_tool_as(bearer, tool, arguments).await;
    if status == 200 {
        Ok(body)
    } else {
        let code = body["error"]["code"].as_str().unwrap_or("?").to_string();
        let expected_status = match code.as_str() {
            "not_found" => 404,
            "permission_denied" => 403,
            "unauthenticated" => 401,
            _ => status,
        };
        assert_eq!(status, expected_status, "{tool}: HTTP status matches the code {code}");
        Err(code)
    }
}

#[tokio::test]
async fn every_tool_enforces_identity_permissions_and_scope_over_the_http_tool_endpoint() {
    let app = spawn_app().await;
    let world = build_world(&app).await;
    for (tool, arguments, expected) in cases(&world, "http") {
        for (principal, expect) in PRINCIPALS.iter().zip(expected.iter()) {
            let outcome = http_outcome(&app, bearer(&world, principal), tool, arguments.clone()).await;
            check(expect, &outcome, &format!("{principal} {tool} {arguments}"));
        }
        for principal in INVALID {
            let outcome = http_outcome(&app, bearer(&world, principal), tool, arguments.clone()).await;
            assert_eq!(outcome.err().as_deref(), Some("unauthenticated"), "{principal} {tool}");
        }
    }
    delete_outcomes(&app, &world, async |principal: &str, tool: &str, arguments: Value| {
        http_outcome(&app, bearer(&world, principal), tool, arguments).await
    })
    .await;
    app.stop().await;
}

async fn mcp_client(app: &TestApp, bearer: Option<&str>) -> Result<RunningService<RoleClient, ClientConfig>, String> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", app.address));
    if let Some(bearer) = bearer {
        config = config.auth_header(bearer.to_string());
    }
    ClientConfig::new(ClientCapabilities::default(), Implementation::new("matrix", "0"))
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
        .map_err(|e| e.to_string())
}

async fn mcp_outcome(
    client: &RunningService<RoleClient, ClientConfig>,
    tool: &str,
    arguments: Value,
) -> Result<Value, String> {
    let request =
        CallToolRequestParams::new(tool.to_string()).with_arguments(arguments.as_object().cloned().unwrap_or_default());
    let result = client.call_tool(request).await.map_err(|e| format!("protocol error: {e}"))?;
    let body = result.structured_content.unwrap_or(Value::Null);
    if result.is_error == Some(true) {
        Err(body["error"]["code"].as_str().unwrap_or("?").to_string())
    } else {
        Ok(body)
    }
}

#[tokio::test]
async fn every_tool_enforces_identity_permissions_and_scope_over_mcp() {
    let app = spawn_app().await;
    let world = build_world(&app).await;
    let mut clients = Vec::new();
    for principal in PRINCIPALS {
        clients.push(mcp_client(&app, bearer(&world, principal)).await.expect("valid credentials connect"));
    }
    for principal in INVALID {
        assert!(mcp_client(&app, bearer(&world, principal)).await.is_err(), "{principal} must not get an MCP session");
    }
    for (tool, arguments, expected) in cases(&world, "mcp") {
        for ((principal, client), expect) in PRINCIPALS.iter().zip(&clients).zip(expected.iter()) {
            let outcome = mcp_outcome(client, tool, arguments.clone()).await;
            check(expect, &outcome, &format!("{principal} {tool} {arguments}"));
        }
    }
    delete_outcomes(&app, &world, async |principal: &str, tool: &str, arguments: Value| {
        let index = PRINCIPALS.iter().position(|p| *p == principal).unwrap();
        mcp_outcome(&clients[index], tool, arguments).await
    })
    .await;
    for client in clients {
        client.cancel().await.unwrap();
    }
    app.stop().await;
}

#[tokio::test]
async fn tokens_never_carry_more_than_their_key_and_die_with_it() {
    let app = spawn_app().await;
    let key = create_key(&app.auth, "dana", "read,write", None).await;
    let exchange = |body: Value| {
        let request = app.http.post(format!("{}/auth/token", app.address)).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, narrow) = exchange(json!({"api_key": key, "permissions": ["read"]})).await;
    assert_eq!(status, 200);
    assert_eq!(narrow["permissions"], json!(["read"]));
    let narrow_token = narrow["token"].as_str().unwrap().to_string();
    let (status, body) =
        app.call_tool_as(Some(&narrow_token), "create_session", json!({"id": "d", "purpose": "x"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("permission_denied")));

    let (status, escalated) = exchange(json!({"api_key": key, "permissions": ["read", "admin"]})).await;
    assert_eq!(status, 200);
    assert_eq!(escalated["permissions"], json!(["read"]), "asking for admin does not grant it");

    let (status, body) = exchange(json!({"api_key": "cs_000000000000_nothing"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")));

    let (_, full) = exchange(json!({"api_key": key})).await;
    let token = full["token"].as_str().unwrap().to_string();
    assert_eq!(app.call_tool_as(Some(&token), "list_sessions", json!({})).await.0, 200);
    let key_id = key.split('_').nth(1).unwrap();
    app.auth.revoke(key_id).await.unwrap();
    assert_eq!(app.call_tool_as(Some(&key), "list_sessions", json!({})).await.0, 401, "revoked key stops at once");
    assert_eq!(app.call_tool_as(Some(&token), "list_sessions", json!({})).await.0, 401, "so do its tokens");

    let response =
        app.http.post(format!("{}/mcp/tool/list_sessions", app.address)).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().get("www-authenticate").unwrap().to_str().unwrap().starts_with("Bearer"));
    app.stop().await;
}

#[tokio::test]
async fn keys_and_the_token_secret_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = crate::helpers::test_settings(dir.path());
    let keys = || context_store::auth::KeyStore::sqlite(dir.path()).unwrap();
    let first = context_store::auth::Authenticator::open(&settings.auth_settings(), keys()).unwrap();
    let key = create_key(&first, "erin", "read", None).await;
    let token = first
        .exchange(context_store::auth::TokenRequest { api_key: key.clone(), permissions: None, ttl_seconds: None })
        .await
        .unwrap();
    drop(first);
    let reopened = context_store::auth::Authenticator::open(&settings.auth_settings(), keys()).unwrap();
    assert_eq!(reopened.authenticate(Some(&key)).await.unwrap().agent_id, "erin");
    assert_eq!(reopened.authenticate(Some(&token.token)).await.unwrap().agent_id, "erin");
    assert!(reopened.ensure_admin_key().await.unwrap().is_none(), "no second admin key when keys exist");
}

#[tokio::test]
async fn a_foreign_origin_is_refused_on_mcp() {
    let app = spawn_app().await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "browser", "version": "1"}}});
    let post = |origin: &'static str| {
        app.http
            .post(format!("{}/mcp", app.address))
            .bearer_auth(&app.key)
            .header("origin", origin)
            .header("accept", "application/json, text/event-stream")
            .json(&initialize)
            .send()
    };
    assert_eq!(post("http://evil.example").await.unwrap().status().as_u16(), 403);
    assert_eq!(post("http://localhost:3000").await.unwrap().status().as_u16(), 200);
    app.stop().await;
}

#[tokio::test]
async fn each_agent_is_rate_limited_with_429_and_retry_after() {
    let app = spawn_app_with(|settings| {
        settings.server.rate_limit_per_second = 1;
        settings.server.rate_limit_burst = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let response = app
            .http
            .post(format!("{}/mcp/tool/list_sessions", app.address))
            .bearer_auth(&app.key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status().as_u16() == 429 {
            assert!(response.headers().get("retry-after").is_some());
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    // Another agent has its own budget.
    assert_eq!(app.call_tool_as(Some(&app.admin_key), "list_sessions", json!({})).await.0, 200);
    app.stop().await;
}

/// Token exchanges whose bodies arrive slowly hold their own connections, not the slots that readiness
/// probes share with them; a body that never completes is answered 408.
#[tokio::test]
async fn slow_token_bodies_do_not_take_the_readiness_slots() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let host = app.address.trim_start_matches("http://").to_string();
    // More half-sent token exchanges than the unauthenticated routes have slots.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        let head = format!(
            "POST /auth/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"api_"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let ready = app.http.get(format!("{}/health/ready", app.address)).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "readiness answered beside 40 slow bodies");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), slow[0].read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a body that never completes is answered within 20 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    app.stop().await;
}

/// A client that starts a request and never finishes its headers (slowloris) is cut off after
/// `server.header_read_timeout_ms`, while a prompt request on another connection is served.
#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|settings| settings.server.header_read_timeout_ms = 300).await;
    let host = app.address.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&host).await.unwrap();
    slow.write_all(format!("GET /health HTTP/1.1\r\nHost: {host}\r\nX-Slow: ").as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was still open after 20 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "closed without serving the request: {answer}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250), "closed before the timeout");
    let health = app.http.get(format!("{}/health", app.address)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    app.stop().await;
}

/// Reads from `reader` until the server closes the connection: what it sent, or None when it stayed open for
/// `limit`.
async fn read_until_closed(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: std::time::Duration,
) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(limit, async {
        while let Ok(n @ 1..) = reader.read(&mut chunk).await {
            received.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .ok()
    .map(|()| received)
}

/// An HTTP/2 frame: the 9-byte header and `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Whether `received` holds a frame of `kind` with every bit of `flags` set (frames are read in order).
fn has_h2_frame(received: &[u8], kind: u8, flags: u8) -> bool {
    // The server's frames start right away (no preface from a server).
    let mut at = 0;
    while at + 9 <= received.len() {
        let length =
            usize::from(received[at]) << 16 | usize::from(received[at + 1]) << 8 | usize::from(received[at + 2]);
        if received[at + 3] == kind && received[at + 4] & flags == flags {
            return true;
        }
        at += 9 + length;
    }
    false
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection that never sends a byte, an HTTP/2 connection kept up by pings with no stream, and an
/// HTTP/2 stream whose answer the client never takes (a zero window) are closed once the server has had
/// nothing to do for `server.header_read_timeout_ms`; a request that runs longer than that (an event
/// stream) keeps its connection.
#[tokio::test]
async fn connections_the_server_has_nothing_to_do_on_are_closed_and_a_long_request_is_not() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|settings| settings.server.header_read_timeout_ms = 400).await;
    let host = app.address.trim_start_matches("http://").to_string();
    let limit = std::time::Duration::from_secs(20);
    let at_least = std::time::Duration::from_millis(400);

    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(&host).await.unwrap();
    read_until_closed(&mut silent, limit).await.expect("a silent connection was open after 20 s");
    assert!(started.elapsed() >= at_least, "closed before the timeout: {:?}", started.elapsed());

    // HTTP/2 with prior knowledge: the preface, empty SETTINGS, then a PING every 100 ms and never a stream.
    let started = std::time::Instant::now();
    let (mut reader, mut writer) = tokio::net::TcpStream::connect(&host).await.unwrap().into_split();
    writer.write_all(&[H2_PREFACE, &h2_frame(4, 0, 0, &[])].concat()).await.unwrap();
    let pinger = tokio::spawn(async move {
        for n in 0u8..200 {
            if writer.write_all(&h2_frame(6, 0, 0, &[n, 0, 0, 0, 0, 0, 0, 0])).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let received =
        read_until_closed(&mut reader, limit).await.expect("an HTTP/2 connection with only pings stayed open");
    assert!(started.elapsed() >= at_least, "closed before the timeout: {:?}", started.elapsed());
    assert!(has_h2_frame(&received, 6, 1), "the server answered the pings (ACK) before it closed");
    pinger.abort();

    // HTTP/2 with a zero initial window: the answer's headers come, its body can never be sent.
    let started = std::time::Instant::now();
    let (mut reader, mut writer) = tokio::net::TcpStream::connect(&host).await.unwrap().into_split();
    let zero_window = h2_frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]);
    // HPACK: :method GET, :scheme http, :path /health and :authority as literals.
    let mut headers = vec![0x82, 0x86, 0x44, 7];
    headers.extend_from_slice(b"/health");
    headers.extend_from_slice(&[0x41, u8::try_from(host.len()).unwrap()]);
    headers.extend_from_slice(host.as_bytes());
    let request = h2_frame(1, 0x4 | 0x1, 1, &headers);
    writer.write_all(&[H2_PREFACE, &zero_window, &request].concat()).await.unwrap();
    let received =
        read_until_closed(&mut reader, limit).await.expect("a stream whose answer is never taken held its connection");
    assert!(started.elapsed() >= at_least, "closed before the timeout: {:?}", started.elapsed());
    assert!(has_h2_frame(&received, 1, 0x4), "the request was answered (HEADERS) before the close");
    assert!(!has_h2_frame(&received, 0, 0), "no body could be sent through a zero window");
    drop(writer);

    // An event stream outlives the idle timeout several times over and still delivers.
    let mut events = app.http.get(format!("{}/events", app.address)).bearer_auth(&app.key).send().await.unwrap();
    assert_eq!(events.status().as_u16(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, body) =
        app.call_tool_as(Some(&app.key), "create_session", json!({"id": "quiet", "purpose": "idle test"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .call_tool_as(Some(&app.key), "store_context", json!({"session_id": "quiet", "content": "after a quiet while"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut seen = String::new();
    while !seen.contains("event:") {
        let chunk = tokio::time::timeout(limit, events.chunk()).await.expect("an event within 20 s").unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("the stream is still open")));
    }
    // Answers keep their length: the tracking of answers does not turn them into chunked ones.
    let health = app.http.get(format!("{}/health", app.address)).send().await.unwrap();
    assert!(health.content_length().is_some_and(|n| n > 0), "{:?}", health.headers());
    app.stop().await;
}

/// Past `server.max_connections` open connections a new one is closed on arrival (and counted); once some
/// close, connections are served again.
#[tokio::test]
async fn connections_past_the_cap_are_closed_on_arrival() {
    let app = spawn_app_with(|settings| {
        settings.server.max_connections = 3;
        settings.server.header_read_timeout_ms = 60_000;
    })
    .await;
    let host = app.address.trim_start_matches("http://").to_string();
    // The test client's own pooled connections may hold some of the three; open until one is refused.
    let mut held = Vec::new();
    let refused = loop {
        assert!(held.len() <= 3, "more than 3 connections were held open");
        let mut next = tokio::net::TcpStream::connect(&host).await.unwrap();
        // The idle timeout is a minute: a close within 1.5 s is the cap's.
        match read_until_closed(&mut next, std::time::Duration::from_millis(1500)).await {
            Some(received) => break received,
            None => held.push(next),
        }
    };
    assert!(refused.is_empty(), "the refused connection was sent nothing");
    drop(held);
    // The held connections' close reaches the server soon; then a new client is served.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let metrics = loop {
        let fresh = reqwest::Client::new();
        if let Ok(response) = fresh.get(format!("{}/metrics", app.address)).bearer_auth(&app.admin_key).send().await {
            break response.text().await.unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no connection was served again within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let refused_total = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.split_once("connections_refused_total ").map(|(_, value)| value.to_string()))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("connections_refused_total in /metrics: {metrics}"));
    assert!(refused_total >= 1.0, "{refused_total}");
    app.stop().await;
}
