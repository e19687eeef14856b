//! A fuzzed sequence of MCP JSON-RPC messages over Streamable HTTP: valid and broken envelopes, unknown
//! methods, random params, real tools with random arguments. Nothing may answer 5xx, the server stays ready,
//! and a rejected message never changes what is stored.

use serde_json::{Map, Value, json};

use crate::helpers::spawn_app_with;

fn random_string(rng: &mut fastrand::Rng) -> String {
    match rng.u8(..6) {
        0 => String::new(),
        1 => "x".repeat(rng.usize(..5000)),
        2 => "ünï\u{0}cødé\u{202e}".into(),
        3 => uuid::Uuid::now_v7().to_string(),
        4 => "fuzz-session".into(),
        _ => (0..rng.usize(1..20)).map(|_| rng.alphanumeric()).collect(),
    }
}

fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
    match rng.u8(..if depth > 3 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 => json!(rng.i64(..)),
        3 => json!(rng.f64() * 1e300),
        4 => Value::String(random_string(rng)),
        5 => Value::Array((0..rng.usize(..4)).map(|_| random_value(rng, depth + 1)).collect()),
        _ => Value::Object(random_object(rng, depth + 1)),
    }
}

/// Objects that use real argument names half the time, so the fuzzer reaches past the decoder.
fn random_object(rng: &mut fastrand::Rng, depth: u32) -> Map<String, Value> {
    const NAMES: &[&str] =
        &["id", "session_id", "content", "query", "key", "value", "limit", "tags", "metadata", "from_id", "to_id"];
    (0..rng.usize(..5))
        .map(|_| {
            let name = if rng.bool() { NAMES[rng.usize(..NAMES.len())].to_string() } else { random_string(rng) };
            (name, random_value(rng, depth))
        })
        .collect()
}

fn random_message(rng: &mut fastrand::Rng) -> Value {
    let method = match rng.u8(..6) {
        0..=2 => "tools/call".to_string(),
        3 => "tools/list".to_string(),
        4 => ["initialize", "ping", "resources/list", "notifications/initialized"][rng.usize(..4)].to_string(),
        _ => random_string(rng),
    };
    let params = if method == "tools/call" && rng.u8(..4) != 0 {
        let tools = context_store::tools::catalogue();
        let name = if rng.u8(..5) == 0 { random_string(rng) } else { tools[rng.usize(..tools.len())].name.to_string() };
        json!({"name": name, "arguments": random_value(rng, 0)})
    } else {
        random_value(rng, 0)
    };
    let mut message = json!({"jsonrpc": "2.0", "id": rng.u32(..), "method": method, "params": params});
    match rng.u8(..10) {
        0 => message["jsonrpc"] = json!("1.0"),
        1 => message["id"] = random_value(rng, 3),
        2 => {
            message.as_object_mut().unwrap().remove("method");
        }
        3 => message = Value::Array(vec![message.clone(), random_value(rng, 2)]),
        4 => message = random_value(rng, 0),
        _ => {}
    }
    message
}

/// Whether the answer says the message was refused (so it must have changed nothing).
fn refused(status: u16, body: &Value) -> bool {
    status >= 400 || body.get("error").is_some() || body["result"]["isError"] == json!(true)
}

#[tokio::test]
async fn fuzzed_json_rpc_never_fails_the_server_and_refused_messages_change_nothing() {
    let app = spawn_app_with(|settings| {
        settings.server.rate_limit_per_second = 1_000_000;
        settings.server.rate_limit_burst = 1_000_000;
    })
    .await;
    let counts = |app: &crate::helpers::TestApp| {
        let (http, address, key) = (app.http.clone(), app.address.clone(), app.admin_key.clone());
        async move {
            let response = http.post(format!("{address}/mcp/tool/get_metrics")).bearer_auth(key).json(&json!({}));
            let body: Value = response.send().await.unwrap().json().await.unwrap();
            assert!(body["items"].is_object(), "get_metrics answers: {body}");
            body["items"].clone()
        }
    };
    let mut rng = fastrand::Rng::with_seed(2026);
    let mut rejected = 0;
    for round in 0..400 {
        let message = random_message(&mut rng);
        let before = counts(&app).await;
        let response = app
            .http
            .post(format!("{}/mcp", app.address))
            .bearer_auth(&app.key)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&message)
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert!(status < 500, "round {round}: {status} for {message}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if refused(status, &body) {
            rejected += 1;
            assert_eq!(counts(&app).await, before, "round {round}: a refused message changed the store: {message}");
        }
    }
    assert!(rejected > 200, "the fuzzer mostly sends garbage; only {rejected} of 400 were refused");
    let ready = app.http.get(format!("{}/health/ready", app.address)).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "still ready");
}
