//! A direct path for the commonest MCP request, a stateless `tools/call`, in front of rmcp's Streamable HTTP
//! service. rmcp serves each stateless POST by building a service and a peer, spawning two tasks and
//! answering through channels; for a tool call that machinery cost about three times the tool itself
//! (BENCHMARKS.md, "MCP's per-request cost"). This path answers the same request with the same JSON-RPC
//! response (what the handler's `tool_call_result` serializes to, written around the result's JSON text),
//! and hands everything else to rmcp untouched: other
//! methods, batches, notifications, `_meta` or task parameters, the 2026-07-28 protocol (per-request
//! versions and SEP-2243 headers), any other `Mcp-*` header, unexpected media types, bodies without a
//! length or over the limit, and anything that does not parse as exactly this request.

use axum::body::{Body, Bytes};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::StreamableHttpService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::HttpState;
use crate::auth::Principal;

/// Protocol versions whose stateless requests rmcp 3.11 serves without per-request negotiation and
/// without standard headers (SEP-2243 starts at 2026-07-28).
const DIRECT_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolsCall {
    jsonrpc: String,
    id: Value,
    method: String,
    params: ToolsCallParams,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolsCallParams {
    name: String,
    #[serde(default)]
    arguments: Option<Map<String, Value>>,
}

#[derive(Serialize)]
struct Reply<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    result: &'a rmcp::model::CallToolResult,
}

/// Whether the headers are those of a plain stateless JSON POST this path may answer.
fn direct_headers(headers: &HeaderMap, limit: usize) -> bool {
    let media = |name: header::HeaderName| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
    };
    // Accept values with parameters (`q=0`) or quotes are left to rmcp's full parser.
    let plain_accept =
        headers.get_all(header::ACCEPT).iter().all(|v| v.to_str().is_ok_and(|v| !v.contains([';', '"'])));
    let accepts: Vec<String> = media(header::ACCEPT).collect();
    let json_body = media(header::CONTENT_TYPE).eq(["application/json".to_string()]);
    // Without the header rmcp picks the version itself: such requests stay with it.
    let version_ok = match headers.get_all("mcp-protocol-version").iter().collect::<Vec<_>>().as_slice() {
        [one] => one.to_str().is_ok_and(|v| DIRECT_VERSIONS.contains(&v)),
        _ => false,
    };
    let other_mcp_headers = headers.keys().any(|name| {
        let name = name.as_str();
        name.starts_with("mcp-") && name != "mcp-protocol-version"
    });
    let sized = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|length| length <= limit);
    // rmcp checks an Origin against its own list (stricter than the router's same-origin rule): such
    // requests stay with it.
    let no_origin = !headers.contains_key(header::ORIGIN);
    plain_accept
        && no_origin
        && accepts.iter().any(|m| m == "application/json")
        && accepts.iter().any(|m| m == "text/event-stream")
        && json_body
        && version_ok
        && !other_mcp_headers
        && sized
}

/// The request, if it is exactly one `tools/call` with a string or integer id.
fn parse(body: &Bytes) -> Option<ToolsCall> {
    let call: ToolsCall = serde_json::from_slice(body).ok()?;
    // rmcp takes integer ids up to i64::MAX.
    let id_ok = call.id.is_string() || call.id.is_i64();
    (call.jsonrpc == "2.0" && call.method == "tools/call" && id_ok).then_some(call)
}

/// rmcp's Streamable HTTP service as the router holds it: shared, so a request does not clone its
/// configuration (host and origin lists, a cancellation token) as a tower service would be cloned.
pub type Rmcp = StreamableHttpService<crate::mcp::McpServer, LocalSessionManager>;

/// `/mcp`: answers a stateless `tools/call` itself, passes every other request to rmcp.
pub async fn serve(state: HttpState, rmcp: Arc<Rmcp>, request: Request) -> Response {
    let next = async |request: Request| rmcp.handle(request).await.map(Body::new);
    if request.method() != Method::POST || !direct_headers(request.headers(), state.mcp_body_limit) {
        return next(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, state.mcp_body_limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            // As rmcp answers a body it cannot read.
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "Failed to read request body").into_response();
        }
    };
    let Some(call) = parse(&bytes) else {
        return next(Request::from_parts(parts, Body::from(bytes))).await;
    };
    state.service.metrics().mcp_direct_calls.inc();
    let principal = parts.extensions.get::<Principal>().cloned().unwrap_or_else(|| state.unidentified_principal());
    let arguments = call.params.arguments.map(Value::Object).unwrap_or(Value::Null);
    let result = crate::mcp::timed_call::<crate::tools::AsMcpJson>(
        &state.service,
        &state.auth,
        &principal,
        &call.params.name,
        arguments,
    )
    .await;
    let body = match result {
        Ok(json) => reply_with_json(&call.id, &json),
        Err(error) => {
            let mut result = crate::mcp::tool_call_result(Err(error));
            // What rmcp's handler does for peers before 2026-07-28 (all this path serves): no "complete" marker.
            result.result_type.take_if(|kind| kind.is_complete());
            serde_json::to_vec(&Reply { jsonrpc: "2.0", id: &call.id, result: &result })
        }
    };
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "tools/call reply did not serialize");
            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The JSON-RPC answer to a successful call, written around the result's JSON text: the text content (the
/// same JSON as a string), a resource link per context it names (from the typed result), then the text
/// itself as the structured content. This is
/// `tool_call_result` as rmcp serializes it for peers before 2026-07-28, without building a `Value` or
/// serializing the result twice.
fn reply_with_json(id: &Value, result: &crate::tools::McpJson) -> serde_json::Result<Vec<u8>> {
    let json = &result.json;
    let mut out = Vec::with_capacity(json.len() * 2 + result.links.len() + 128);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    serde_json::to_writer(&mut out, id)?;
    out.extend_from_slice(br#","result":{"content":[{"type":"text","text":"#);
    write_json_text_as_string(json, &mut out);
    out.push(b'}');
    out.extend_from_slice(&result.links);
    out.extend_from_slice(br#"],"structuredContent":"#);
    out.extend_from_slice(json);
    out.extend_from_slice(br#","isError":false}}"#);
    Ok(out)
}

/// Writes compact JSON text produced by serde_json as a JSON string. Such text holds no control characters
/// (serde_json escapes them inside strings and writes no whitespace between tokens) and is valid UTF-8, so
/// only `"` and `\` need escaping: they are found with memchr and the runs between them copied whole, where
/// a general string escaper looks at every byte (the text is most of an MCP read's answer).
fn write_json_text_as_string(json: &[u8], out: &mut Vec<u8>) {
    debug_assert!(json.iter().all(|&byte| byte >= 0x20) && std::str::from_utf8(json).is_ok());
    out.reserve(json.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for at in memchr::memchr2_iter(b'"', b'\\', json) {
        out.extend_from_slice(&json[start..at]);
        out.extend_from_slice(&[b'\\', json[at]]);
        start = at + 1;
    }
    out.extend_from_slice(&json[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(header::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const PLAIN: [(&str, &str); 4] = [
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
        ("mcp-protocol-version", "2025-06-18"),
        ("content-length", "100"),
    ];

    #[test]
    fn only_plain_stateless_posts_take_the_direct_path() {
        assert!(direct_headers(&headers(&PLAIN), 1000));
        assert!(!direct_headers(&headers(&PLAIN), 99), "over the body limit");
        let with = |extra: (&str, &str)| {
            let mut pairs = PLAIN.to_vec();
            pairs.retain(|(name, _)| *name != extra.0);
            pairs.push(extra);
            direct_headers(&headers(&pairs), 1000)
        };
        assert!(!with(("mcp-protocol-version", "2026-07-28")), "per-request negotiation stays with rmcp");
        assert!(!with(("mcp-protocol-version", "1999-01-01")), "rmcp answers unknown versions");
        assert!(!with(("accept", "application/json")), "rmcp answers 406");
        assert!(!with(("content-type", "text/plain")), "rmcp answers 415");
        assert!(!with(("mcp-method", "tools/call")), "standard headers are validated by rmcp");
        assert!(!with(("mcp-session-id", "abc")));
        let mut no_version = PLAIN.to_vec();
        no_version.retain(|(name, _)| *name != "mcp-protocol-version");
        assert!(!direct_headers(&headers(&no_version), 1000), "rmcp chooses the version then");
        assert!(with(("content-type", "application/json; charset=utf-8")));
        assert!(!with(("accept", "application/json, text/event-stream;q=0")), "weights are rmcp's to read");
        assert!(!with(("origin", "http://127.0.0.1:8080")), "rmcp checks origins against its own list");
        let mut no_length = PLAIN.to_vec();
        no_length.retain(|(name, _)| *name != "content-length");
        assert!(!direct_headers(&headers(&no_length), 1000), "a chunked body goes to rmcp");
    }

    #[test]
    fn only_exactly_a_tools_call_is_parsed() {
        let ok = |text: &str| parse(&Bytes::from(text.to_string())).is_some();
        assert!(ok(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_metrics"}}"#));
        assert!(ok(r#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"x","arguments":{}}}"#));
        assert!(!ok(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#));
        assert!(!ok(r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}"#), "a notification");
        assert!(!ok(r#"{"jsonrpc":"2.0","id":1.5,"method":"tools/call","params":{"name":"x"}}"#));
        assert!(!ok(r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"x"}}"#));
        assert!(!ok(r#"{"jsonrpc":"2.0","id":18446744073709551615,"method":"tools/call","params":{"name":"x"}}"#));
        assert!(!ok(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{}}}"#));
        assert!(!ok(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","task":{}}}"#));
        assert!(!ok(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[]}}"#));
        assert!(!ok(r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}]"#), "a batch");
        assert!(!ok(r#"{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"x"}}"#));
    }

    #[test]
    fn json_text_is_written_as_the_string_serde_json_would_write() {
        let values = [
            serde_json::json!({"content": "line\nwith \"quotes\", a \\ backslash, é and \u{1}", "n": [1, 2.5, null]}),
            serde_json::json!("plain"),
            serde_json::json!({}),
        ];
        for value in values {
            let text = serde_json::to_vec(&value).unwrap();
            let mut out = Vec::new();
            write_json_text_as_string(&text, &mut out);
            let expected = serde_json::to_vec(std::str::from_utf8(&text).unwrap()).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), String::from_utf8(expected).unwrap());
        }
    }
}
