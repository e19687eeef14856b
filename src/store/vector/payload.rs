//! Mapping between a `Context` and its point payload. Times are stored as epoch milliseconds so range
//! filters work on integer indexes. Shared by every vector backend.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::domain::{Context, Timestamp, Visibility};
use crate::error::{StoreError, StoreResult};

pub const KIND_CONTEXT: &str = "context";

pub fn to_payload(context: &Context) -> Value {
    let mut payload = json!({
        "kind": KIND_CONTEXT,
        "id": context.id.to_string(),
        "session_id": context.session_id,
        "agent_id": context.agent_id,
        "type": context.context_type,
        "content": context.content,
        "tags": context.tags,
        "metadata": context.metadata,
        "visibility": context.visibility.as_str(),
        // Indexed as a bitmap: the read-scope filter checks it first on every point a search visits.
        "public": context.visibility == Visibility::Public,
        "created_at": context.created_at.millis(),
        "updated_at": context.updated_at.millis(),
        "version": context.version,
        "content_hash": context.content_hash,
    });
    if let Some(expires_at) = context.expires_at {
        payload["expires_at"] = json!(expires_at.millis());
    }
    payload
}

fn lacks(key: &str) -> StoreError {
    StoreError::Backend(format!("point payload lacks '{key}'"))
}

fn text(payload: &mut Map<String, Value>, key: &str) -> StoreResult<String> {
    match payload.remove(key) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(StoreError::Backend(format!("point payload '{key}' is not a string"))),
        None => Err(lacks(key)),
    }
}

fn integer(payload: &Map<String, Value>, key: &str) -> StoreResult<i64> {
    payload
        .get(key)
        .ok_or_else(|| lacks(key))?
        .as_i64()
        .ok_or_else(|| StoreError::Backend(format!("point payload '{key}' is not an integer")))
}

/// The context a payload holds; its strings, tags and metadata are moved out, not copied.
pub fn from_payload(mut payload: Map<String, Value>) -> StoreResult<Context> {
    let id = Uuid::parse_str(&text(&mut payload, "id")?)
        .map_err(|_| StoreError::Backend("point payload id is not a UUID".into()))?;
    let visibility = Visibility::parse(&text(&mut payload, "visibility")?)
        .ok_or_else(|| StoreError::Backend("point payload visibility is unknown".into()))?;
    let tags = match payload.remove("tags").ok_or_else(|| lacks("tags"))? {
        Value::Array(tags) => tags
            .into_iter()
            .filter_map(|tag| match tag {
                Value::String(tag) => Some(tag),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let metadata = match payload.remove("metadata").ok_or_else(|| lacks("metadata"))? {
        Value::Object(metadata) => metadata,
        _ => Map::new(),
    };
    let expires_at = payload.get("expires_at").and_then(Value::as_i64).map(Timestamp);
    Ok(Context {
        id,
        session_id: text(&mut payload, "session_id")?,
        agent_id: text(&mut payload, "agent_id")?,
        context_type: text(&mut payload, "type")?,
        content: text(&mut payload, "content")?,
        tags,
        metadata,
        visibility,
        created_at: Timestamp(integer(&payload, "created_at")?),
        updated_at: Timestamp(integer(&payload, "updated_at")?),
        version: integer(&payload, "version")?,
        expires_at,
        content_hash: text(&mut payload, "content_hash")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::content_hash;

    #[test]
    fn payload_round_trips_a_context() {
        let mut metadata = Map::new();
        metadata.insert("priority".into(), json!(3));
        let context = Context {
            id: Uuid::now_v7(),
            session_id: "s1".into(),
            agent_id: "a1".into(),
            context_type: "note".into(),
            content: "hello".into(),
            tags: vec!["x".into()],
            metadata,
            visibility: Visibility::Private,
            created_at: Timestamp(1),
            updated_at: Timestamp(2),
            version: 3,
            expires_at: Some(Timestamp(4)),
            content_hash: content_hash("hello"),
        };
        let payload = to_payload(&context);
        assert_eq!(from_payload(payload.as_object().unwrap().clone()).unwrap(), context);
    }
}
