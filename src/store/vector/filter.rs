//! Translates a validated `ContextFilter` (including the caller's read scope and expiry) into a payload
//! filter in Qdrant's REST notation, which qdrant-edge deserializes directly.

use serde_json::{Value, json};

use crate::domain::{ContextFilter, Visibility};

fn match_value(key: &str, value: Value) -> Value {
    json!({"key": key, "match": {"value": value}})
}

fn match_any<T: serde::Serialize>(key: &str, values: &[T]) -> Value {
    json!({"key": key, "match": {"any": values}})
}

/// The filter as Qdrant REST JSON: `{"must": [...]}`.
///
/// Every point is a context, so there is no condition on the payload's `kind`: the HNSW walk checks the
/// filter on every point it visits, and that always-true keyword check was a fifth of a search's CPU at
/// 100k points (BENCHMARKS.md, session 5). A second kind of point would need the condition back.
pub fn to_qdrant_json(filter: &ContextFilter) -> Value {
    let mut must = Vec::new();

    if !filter.scope.admin {
        // Public contexts, or private ones the caller authored; admin_only is never visible. `public` comes
        // first: its index is a bitmap, while a keyword check reads the point's entry in a per-point table
        // (a cache miss per visited point at a million points). Points written before `public` existed
        // match by `visibility`.
        must.push(json!({"should": [
            match_value("public", json!(true)),
            match_value("visibility", json!(Visibility::Public.as_str())),
            {"must": [
                match_value("visibility", json!(Visibility::Private.as_str())),
                match_value("agent_id", json!(filter.scope.agent_id)),
            ]},
        ]}));
    }
    if let Some(sessions) = &filter.scope.sessions {
        must.push(match_any("session_id", sessions));
    }
    must.push(json!({"should": [
        {"is_empty": {"key": "expires_at"}},
        {"key": "expires_at", "range": {"gt": filter.now.millis()}},
    ]}));

    if let Some(session_id) = &filter.session_id {
        must.push(match_value("session_id", json!(session_id)));
    }
    if !filter.types.is_empty() {
        must.push(match_any("type", &filter.types));
    }
    if !filter.tags_any.is_empty() {
        must.push(match_any("tags", &filter.tags_any));
    }
    for tag in &filter.tags_all {
        must.push(match_value("tags", json!(tag)));
    }
    if !filter.agent_ids.is_empty() {
        must.push(match_any("agent_id", &filter.agent_ids));
    }
    if filter.created_after.is_some() || filter.created_before.is_some() {
        let mut range = serde_json::Map::new();
        if let Some(after) = filter.created_after {
            range.insert("gte".into(), json!(after.millis()));
        }
        if let Some(before) = filter.created_before {
            range.insert("lt".into(), json!(before.millis()));
        }
        must.push(json!({"key": "created_at", "range": range}));
    }
    if !filter.visibility.is_empty() {
        let names: Vec<&str> = filter.visibility.iter().map(|v| v.as_str()).collect();
        must.push(match_any("visibility", &names));
    }
    for (key, value) in &filter.metadata {
        must.push(metadata_condition(key, value));
    }
    json!({ "must": must })
}

/// The condition on one metadata key, in Qdrant REST JSON.
pub fn metadata_condition(key: &str, value: &Value) -> Value {
    // Quoted: metadata keys may hold `:`, `@` and `/`, which Qdrant's JSON path syntax only takes quoted
    // (keys never contain `"` or a backslash: parse_metadata refuses them). Found by `cargo fuzz`.
    let path = format!("metadata.\"{key}\"");
    match value.as_f64() {
        // Exact matches take 64-bit signed integers only; other numbers (fractions, integers above
        // i64::MAX) are compared as a closed range of one point, as SQLite compares them as reals.
        Some(number) if !value.is_i64() => json!({"key": path, "range": {"gte": number, "lte": number}}),
        _ => match_value(&path, value.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ContextFilterArgs, ReadScope, Timestamp};

    #[test]
    fn non_admin_filter_restricts_visibility_and_expiry() {
        let scope = ReadScope { agent_id: "bob".into(), admin: false, sessions: None };
        let filter = ContextFilter::parse(ContextFilterArgs::default(), scope, Timestamp(10)).unwrap();
        let json = to_qdrant_json(&filter).to_string();
        assert!(json.contains(r#"{"should":[{"key":"public","match":{"value":true}},"#), "{json}");
        assert!(json.contains("\"private\""));
        assert!(json.contains("\"bob\""));
        assert!(json.contains("expires_at"));
    }

    #[test]
    fn admin_filter_has_no_visibility_restriction() {
        let scope = ReadScope { agent_id: "root".into(), admin: true, sessions: None };
        let filter = ContextFilter::parse(ContextFilterArgs::default(), scope, Timestamp(10)).unwrap();
        assert!(!to_qdrant_json(&filter).to_string().contains("\"private\""));
    }
}
