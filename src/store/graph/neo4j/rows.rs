use super::{Statements, TxResult, cypher, query, rows};
use crate::domain::{AgentState, Context, ContextFilter, ReadScope, Session, Timestamp, Visibility};
use crate::error::{StoreError, StoreResult};
use crate::store::graph::IndexEntry;
use neo4rs::{BoltType, Query, Row};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

pub(super) fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("JSON values serialize")
}

pub(super) fn bolt(value: Value) -> TxResult<BoltType> {
    Ok(BoltType::try_from(value)?)
}

/// A context as returned by the `c {...} AS context` projections.
#[derive(Deserialize)]
pub(super) struct ContextRow {
    pub(super) id: String,
    pub(super) session_id: String,
    pub(super) agent_id: String,
    #[serde(rename = "type")]
    pub(super) context_type: String,
    pub(super) content: String,
    pub(super) tags: Vec<String>,
    pub(super) metadata: String,
    pub(super) visibility: String,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
    pub(super) version: i64,
    pub(super) expires_at: Option<i64>,
    pub(super) content_hash: String,
}

pub(super) fn parse_uuid(text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text).map_err(|e| StoreError::Backend(format!("stored id '{text}' is not a UUID: {e}")))
}

pub(super) fn parse_visibility(text: &str) -> StoreResult<Visibility> {
    Visibility::parse(text).ok_or_else(|| StoreError::Backend(format!("unknown visibility '{text}'")))
}

impl ContextRow {
    fn into_context(self) -> StoreResult<Context> {
        Ok(Context {
            id: parse_uuid(&self.id)?,
            session_id: self.session_id,
            agent_id: self.agent_id,
            context_type: self.context_type,
            content: self.content,
            tags: self.tags,
            metadata: serde_json::from_str(&self.metadata)?,
            visibility: parse_visibility(&self.visibility)?,
            created_at: Timestamp(self.created_at),
            updated_at: Timestamp(self.updated_at),
            version: self.version,
            expires_at: self.expires_at.map(Timestamp),
            content_hash: self.content_hash,
        })
    }
}

pub(super) fn context_of(row: &Row) -> TxResult<Context> {
    Ok(row.get::<ContextRow>("context")?.into_context()?)
}

#[derive(Deserialize)]
pub(super) struct SessionRow {
    pub(super) id: String,
    pub(super) purpose: String,
    pub(super) metadata: String,
    pub(super) created_by: String,
    pub(super) created_at: i64,
}

#[derive(Deserialize)]
pub(super) struct StateRow {
    pub(super) agent_id: String,
    pub(super) session_id: String,
    pub(super) key: String,
    pub(super) value: String,
    pub(super) version: i64,
    pub(super) updated_at: i64,
    pub(super) expires_at: Option<i64>,
}

#[derive(Deserialize)]
pub(super) struct VersionRow {
    pub(super) version: i64,
    #[serde(rename = "type")]
    pub(super) context_type: String,
    pub(super) content: String,
    pub(super) tags: Vec<String>,
    pub(super) metadata: String,
    pub(super) visibility: String,
    pub(super) updated_at: i64,
}

pub(super) fn state_of(row: &Row) -> TxResult<AgentState> {
    let state: StateRow = row.get("state")?;
    Ok(AgentState {
        agent_id: state.agent_id,
        session_id: (!state.session_id.is_empty()).then_some(state.session_id),
        key: state.key,
        value: serde_json::from_str(&state.value).map_err(StoreError::from)?,
        version: state.version,
        updated_at: Timestamp(state.updated_at),
        expires_at: state.expires_at.map(Timestamp),
    })
}

/// Whether a metadata value is stored as a filterable `m.<key>` property: scalars and lists of scalars
/// (Neo4j properties cannot hold maps, nulls or mixed lists).
pub(super) fn filterable(value: &Value) -> bool {
    match value {
        Value::Bool(_) | Value::Number(_) | Value::String(_) => true,
        Value::Array(items) => {
            items.iter().all(|v| v.is_string())
                || items.iter().all(|v| v.is_number())
                || items.iter().all(|v| v.is_boolean())
        }
        Value::Null | Value::Object(_) => false,
    }
}

/// Every property of a context node.
pub(super) fn context_props(context: &Context, embedding: &[f32]) -> TxResult<BoltType> {
    let mut props = Map::new();
    props.insert("id".into(), context.id.to_string().into());
    props.insert("session_id".into(), context.session_id.clone().into());
    props.insert("agent_id".into(), context.agent_id.clone().into());
    props.insert("type".into(), context.context_type.clone().into());
    props.insert("content".into(), context.content.clone().into());
    props.insert("tags".into(), context.tags.clone().into());
    props.insert("metadata".into(), json_text(&context.metadata).into());
    props.insert("visibility".into(), context.visibility.as_str().into());
    props.insert("created_at".into(), context.created_at.millis().into());
    props.insert("updated_at".into(), context.updated_at.millis().into());
    props.insert("version".into(), context.version.into());
    if let Some(expires_at) = context.expires_at {
        props.insert("expires_at".into(), expires_at.millis().into());
    }
    props.insert("content_hash".into(), context.content_hash.clone().into());
    props.insert("deleted".into(), false.into());
    for (key, value) in &context.metadata {
        if filterable(value) {
            props.insert(format!("m.{key}"), value.clone());
        }
    }
    let mut props = bolt(Value::Object(props))?;
    if !embedding.is_empty()
        && let BoltType::Map(map) = &mut props
    {
        map.put("embedding".into(), embedding.iter().map(|v| f64::from(*v)).collect::<Vec<f64>>().into());
    }
    Ok(props)
}

pub(super) fn scope_params(query: Query, scope: &ReadScope, now: Timestamp) -> Query {
    query
        .param("admin", scope.admin)
        .param("agent_id", scope.agent_id.clone())
        .param("sessions", scope.sessions.clone())
        .param("now", now.millis())
}

pub(super) fn filter_query(filter: &ContextFilter, after: Option<Uuid>, limit: usize) -> TxResult<Query> {
    let text = if filter.session_id.is_some() { cypher::CONTEXT_LIST_IN_SESSION } else { cypher::CONTEXT_LIST };
    filter_params(Query::new(text.to_string()).param("after", after.map(|a| a.to_string())), filter, limit)
}

/// The parameters of a filter (as `context_list.cypher` names them), scope and expiry included.
pub(super) fn filter_params(query: Query, filter: &ContextFilter, limit: usize) -> TxResult<Query> {
    let metadata = Value::Object(filter.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    let query = query
        .param("session_id", filter.session_id.clone())
        .param("types", filter.types.clone())
        .param("agent_ids", filter.agent_ids.clone())
        .param("visibility", filter.visibility.iter().map(|v| v.as_str().to_string()).collect::<Vec<_>>())
        .param("tags_any", filter.tags_any.clone())
        .param("tags_all", filter.tags_all.clone())
        .param("created_after", filter.created_after.map(Timestamp::millis))
        .param("created_before", filter.created_before.map(Timestamp::millis))
        .param("metadata", bolt(metadata)?)
        .param("limit", limit as i64);
    Ok(scope_params(query, &filter.scope, filter.now))
}

pub(super) fn index_entry_of(row: &Row) -> TxResult<IndexEntry> {
    let embedding: Vec<f64> = row.get("embedding")?;
    Ok(IndexEntry { context: context_of(row)?, embedding: embedding.into_iter().map(|v| v as f32).collect() })
}

pub(super) fn session_of(row: &Row) -> TxResult<Session> {
    let session: SessionRow = row.get("session")?;
    Ok(Session {
        id: session.id,
        purpose: session.purpose,
        metadata: serde_json::from_str(&session.metadata).map_err(StoreError::from)?,
        created_by: session.created_by,
        created_at: Timestamp(session.created_at),
    })
}

pub(super) async fn live_contexts(txn: &mut impl Statements, ids: &[Uuid]) -> TxResult<Vec<Context>> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    rows(txn, query(cypher::CONTEXT_GET_MANY).param("ids", ids)).await?.iter().map(context_of).collect()
}
