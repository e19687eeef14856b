//! The tool catalogue shared by every interface: MCP (`tools/list`, `tools/call`), the HTTP tool endpoint
//! (`POST /mcp/tool/{name}`) and the OpenAPI document. One table names each tool, its request and response
//! types (whose schemas are generated from them), its hints and the service method it calls.

use std::sync::Arc;

use rmcp::handler::server::common::schema_for_type;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::model::JsonObject;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{Authenticator, Principal, TokenRequest, TokenResponse};
use crate::error::{ErrorCode, ServiceError};
use crate::service::*;

/// A tool as every interface describes it.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: std::borrow::Cow<'static, str>,
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub input_schema: Arc<JsonObject>,
    pub output_schema: Arc<JsonObject>,
}

/// A failed tool call: a stable code and a message fit for the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ToolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ToolError {
    pub fn to_json(&self) -> Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<ServiceError> for ToolError {
    fn from(err: ServiceError) -> Self {
        let message = match &err {
            // Internal causes are logged where they arise and never sent to callers.
            ServiceError::Internal(_) => "internal error".to_string(),
            ServiceError::InvalidArgument(_)
            | ServiceError::PayloadTooLarge(_)
            | ServiceError::NotFound(_)
            | ServiceError::PermissionDenied(_)
            | ServiceError::Unauthenticated(_)
            | ServiceError::Conflict(_)
            | ServiceError::ResourceExhausted(_)
            | ServiceError::Unavailable(_) => err.to_string(),
        };
        ToolError { code: err.code(), message }
    }
}

/// Arguments are decoded here, not by the transport, so a malformed argument is a tool error the
/// calling model can read and correct (`invalid_argument`), not a protocol error.
fn decode<T: serde::de::DeserializeOwned>(arguments: Value) -> Result<T, ToolError> {
    let arguments = if arguments.is_null() { Value::Object(Default::default()) } else { arguments };
    serde_json::from_value(arguments)
        .map_err(|err| ToolError { code: ErrorCode::InvalidArgument, message: format!("invalid arguments: {err}") })
}

/// How a tool's result is handed to its interface: MCP wants a JSON document, the HTTP endpoint bytes.
pub trait Encoding {
    type Output;
    fn encode<T: Serialize + NamedContexts>(value: &T) -> Result<Self::Output, ToolError>;
}

/// The contexts a tool's result names, read from the typed result: an MCP answer links each as a resource.
/// Every result type says (no default), so a new type cannot leave its links out unnoticed.
pub trait NamedContexts {
    fn named_contexts(&self) -> Vec<&crate::domain::Context>;
}

impl NamedContexts for crate::domain::Context {
    fn named_contexts(&self) -> Vec<&crate::domain::Context> {
        vec![self]
    }
}

impl NamedContexts for GetContextResponse {
    fn named_contexts(&self) -> Vec<&crate::domain::Context> {
        vec![&self.context]
    }
}

impl NamedContexts for StoreContextResponse {
    fn named_contexts(&self) -> Vec<&crate::domain::Context> {
        vec![&self.context]
    }
}

impl NamedContexts for ContextList {
    fn named_contexts(&self) -> Vec<&crate::domain::Context> {
        self.contexts.iter().collect()
    }
}

impl NamedContexts for SearchResponse {
    fn named_contexts(&self) -> Vec<&crate::domain::Context> {
        self.hits.iter().map(|hit| &hit.context).collect()
    }
}

impl NamedContexts for RelatedList {
    fn named_contexts(&self) -> Vec<&crate::domain::Context> {
        self.related.iter().map(|item| &item.context).collect()
    }
}

/// Result types that name no context.
macro_rules! names_no_context {
    ($($kind:ty),*) => {
        $(impl NamedContexts for $kind {
            fn named_contexts(&self) -> Vec<&crate::domain::Context> {
                Vec::new()
            }
        })*
    };
}

names_no_context!(
    Session,
    SessionList,
    DeleteContextResponse,
    LinkContextsResponse,
    AgentStateResponse,
    AgentStateList,
    DeleteAgentStateResponse,
    RecallAgentStateResponse,
    MetricsSummary,
    QueryGraphResponse,
    TokenResponse
);

/// The result as a `serde_json::Value` (MCP's structured content).
pub struct AsValue;

impl Encoding for AsValue {
    type Output = Value;
    fn encode<T: Serialize + NamedContexts>(value: &T) -> Result<Value, ToolError> {
        serde_json::to_value(value).map_err(|err| ServiceError::Internal(err.to_string()).into())
    }
}

/// The result serialized to JSON text directly, without building a `Value` first (the HTTP endpoint: at
/// 20 contexts per page the intermediate document was ~10% of a read's server time).
pub struct AsJsonBytes;

impl Encoding for AsJsonBytes {
    type Output = Vec<u8>;
    fn encode<T: Serialize + NamedContexts>(value: &T) -> Result<Vec<u8>, ToolError> {
        serde_json::to_vec(value).map_err(|err| ServiceError::Internal(err.to_string()).into())
    }
}

/// A result's JSON text and the resource links of the contexts it names, written as content blocks each
/// after a comma (MCP's direct `tools/call` path).
pub struct McpJson {
    pub json: Vec<u8>,
    pub links: Vec<u8>,
}

/// The result serialized as `AsJsonBytes` does, with the links of the contexts its type names.
pub struct AsMcpJson;

impl Encoding for AsMcpJson {
    type Output = McpJson;
    fn encode<T: Serialize + NamedContexts>(value: &T) -> Result<McpJson, ToolError> {
        let json = AsJsonBytes::encode(value)?;
        let links = crate::mcp::primitives::links_json(&value.named_contexts());
        Ok(McpJson { json, links })
    }
}

/// Arguments of `get_metrics`: none.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetMetricsRequest {}

macro_rules! tool_table {
    ($($name:ident($request:ty) -> $response:ty, $hints:expr, $description:expr;)*) => {
        /// Every tool of the service table, in a stable order.
        fn service_tools() -> Vec<ToolSpec> {
            vec![$({
                let (read_only, destructive, idempotent) = $hints;
                ToolSpec {
                    name: stringify!($name),
                    description: $description.into(),
                    read_only,
                    destructive,
                    idempotent,
                    input_schema: schema_for_type::<$request>(),
                    output_schema: schema_for_output::<$response>(),
                }
            }),*]
        }

        /// Whether a tool of the service table only reads (unknown names count as reads: they do nothing).
        fn is_read_only(name: &str) -> bool {
            match name {
                $(stringify!($name) => $hints.0,)*
                _ => true,
            }
        }

        /// Runs one tool of the service table: decode the arguments, call the service, encode the result.
        async fn call_service<E: Encoding>(
            service: &ContextService,
            principal: &Principal,
            name: &str,
            arguments: Value,
        ) -> Result<E::Output, ToolError> {
            match name {
                $(stringify!($name) => E::encode(&service.$name(principal, decode::<$request>(arguments)?).await?),)*
                other => Err(ToolError { code: ErrorCode::NotFound, message: format!("no tool named '{other}'") }),
            }
        }

        /// Decodes a service tool's arguments into its request type and encodes that back to JSON, without
        /// calling anything: what the fuzz targets and their regression tests exercise.
        pub fn decode_arguments(name: &str, arguments: Value) -> Result<Value, ToolError> {
            match name {
                $(stringify!($name) => serde_json::to_value(decode::<$request>(arguments)?)
                    .map_err(|err| ServiceError::Internal(err.to_string()).into()),)*
                other => Err(ToolError { code: ErrorCode::NotFound, message: format!("no tool named '{other}'") }),
            }
        }
    };
}

/// (read_only, destructive, idempotent)
const READ: (bool, bool, bool) = (true, false, true);
const CREATE: (bool, bool, bool) = (false, false, false);
const REPLACE: (bool, bool, bool) = (false, true, false);
const REMOVE: (bool, bool, bool) = (false, true, true);
const UPSERT: (bool, bool, bool) = (false, false, true);

tool_table! {
    create_session(CreateSessionRequest) -> Session, CREATE,
        "Create a shared session (workspace) that agents store contexts in.";
    get_session(GetSessionRequest) -> Session, READ,
        "Get a session by id.";
    list_sessions(ListSessionsRequest) -> SessionList, READ,
        "List sessions by id, paginated with a cursor.";
    store_context(StoreContextRequest) -> StoreContextResponse, CREATE,
        "Remember a piece of text (a context) in a session, with type, tags, metadata and visibility. Identical content in the same session returns the existing context (deduplicated: true).";
    get_context(GetContextRequest) -> GetContextResponse, READ,
        "Get a context by id, optionally with its previous versions (newest first, 20 a page: versions_limit, versions_before).";
    update_context(UpdateContextRequest) -> crate::domain::Context, REPLACE,
        "Change a context you authored. Pass expected_version to fail with conflict instead of overwriting a newer change. The previous version is kept.";
    delete_context(DeleteContextRequest) -> DeleteContextResponse, REMOVE,
        "Delete a context you authored, with its versions and links.";
    list_contexts(ListContextsRequest) -> ContextList, READ,
        "List contexts, newest first, filtered by session, type, tags, agent, time range, visibility or metadata; paginated with a cursor.";
    search_context(SearchRequest) -> SearchResponse, READ,
        "Semantic search: metadata prefilter, then vector similarity and BM25 keyword candidates fused, then fuzzy rerank. Returns hits with vector, lexical, fuzzy and final scores; `stages` turns stages off. Falls back to lexical + fuzzy (mode lexical_fuzzy) if the embedding model is down.";
    link_contexts(LinkContextsRequest) -> LinkContextsResponse, UPSERT,
        "Relate two contexts with a named relation (from -> to).";
    get_related(GetRelatedRequest) -> RelatedList, READ,
        "Contexts reachable from a context through relations, up to depth 3, nearest first, paginated.";
    set_agent_state(SetAgentStateRequest) -> AgentStateResponse, UPSERT,
        "Save a JSON value under a key in your agent state (optionally per session), with compare-and-set (expected_version) and TTL.";
    get_agent_state(AgentStateKeyRequest) -> AgentStateResponse, READ,
        "Read a key of your agent state.";
    list_agent_state(ListAgentStateRequest) -> AgentStateList, READ,
        "List your agent state keys by prefix, paginated.";
    delete_agent_state(AgentStateKeyRequest) -> DeleteAgentStateResponse, REMOVE,
        "Delete a key of your agent state (optionally only at expected_version).";
    recall_agent_state(RecallAgentStateRequest) -> RecallAgentStateResponse, READ,
        "Recall your agent state by meaning (e.g. 'what did I decide about the retry policy?'): entries whose values carry text, ranked by vector then fuzzy similarity, with a score breakdown.";
    get_metrics(GetMetricsRequest) -> MetricsSummary, READ,
        "Cache effectiveness (process-wide counters: query or admin permission) and counts of stored items (admins).";
    query_graph(QueryGraphRequest) -> QueryGraphResponse, READ,
        "Read-only analyst query (needs the query permission): SQL on the embedded store, scoped to what the caller may read; Cypher on Neo4j, for admins. The description served by a running server names its language, scope rule and schema.";
}

/// Every tool, in a stable order.
pub fn catalogue() -> Vec<ToolSpec> {
    let mut tools = service_tools();
    tools.push(ToolSpec {
        name: "authenticate_agent",
        description: "Exchange an API key for a short-lived bearer token (JWT), optionally with fewer permissions."
            .into(),
        read_only: false,
        destructive: false,
        idempotent: false,
        input_schema: schema_for_type::<TokenRequest>(),
        output_schema: schema_for_output::<TokenResponse>(),
    });
    tools
}

/// Every tool, with descriptions that depend on the running service (query_graph names its language and
/// schema).
pub fn catalogue_for(service: &ContextService) -> Vec<ToolSpec> {
    let mut tools = catalogue();
    for tool in &mut tools {
        if tool.name == "query_graph" {
            tool.description = service.query_graph_description().into();
        }
    }
    tools
}

/// Runs one tool. A tool that writes runs as a task of its own, so once it started it runs to completion
/// even when its caller goes away (client gone, request timeout): a write cancelled between the graph and
/// the vector store would leave them apart until a repair.
pub async fn call<E: Encoding>(
    service: &Arc<ContextService>,
    auth: &Authenticator,
    principal: &Principal,
    name: &str,
    arguments: Value,
) -> Result<E::Output, ToolError>
where
    E::Output: Send + 'static,
{
    if name == "authenticate_agent" {
        return E::encode(&auth.exchange(decode(arguments)?).await?);
    }
    if is_read_only(name) {
        return call_service::<E>(service, principal, name, arguments).await;
    }
    let slot = service.write_slot()?;
    let (service, principal, name) = (service.clone(), principal.clone(), name.to_string());
    let write = tokio::spawn(async move {
        let _slot = slot;
        call_service::<E>(&service, &principal, &name, arguments).await
    });
    write.await.map_err(|err| ServiceError::Internal(format!("write task failed: {err}")))?
}

/// The search tool's service method is `search`; the table names tools after their MCP names.
impl ContextService {
    pub async fn search_context(
        &self,
        principal: &Principal,
        request: SearchRequest,
    ) -> crate::error::ServiceResult<SearchResponse> {
        self.search(principal, request).await
    }

    pub async fn get_metrics(
        &self,
        principal: &Principal,
        _request: GetMetricsRequest,
    ) -> crate::error::ServiceResult<MetricsSummary> {
        self.metrics_summary(principal).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::{Context, Timestamp, Visibility};

    fn context(id: u128, content: &str) -> Context {
        Context {
            id: uuid::Uuid::from_u128(id),
            session_id: "s".into(),
            agent_id: "alice".into(),
            context_type: "note".into(),
            content: content.into(),
            tags: vec![],
            metadata: Default::default(),
            visibility: Visibility::Public,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            version: 1,
            expires_at: None,
            content_hash: crate::domain::content_hash(content),
        }
    }

    /// The links an MCP answer carries for a typed result equal those read from its JSON (what rmcp's
    /// path and results without typed links use).
    fn same_links<T: Serialize + NamedContexts>(result: &T) -> usize {
        let typed = crate::mcp::primitives::links_json(&result.named_contexts());
        let value = serde_json::to_value(result).unwrap();
        let mut from_json = Vec::new();
        for link in crate::mcp::primitives::links_in(&value) {
            from_json.push(b',');
            serde_json::to_writer(&mut from_json, &rmcp::model::ContentBlock::resource_link(link)).unwrap();
        }
        let as_values = |bytes: &[u8]| -> Value { serde_json::from_slice(&[b"[0", bytes, b"]"].concat()).unwrap() };
        assert_eq!(as_values(&typed), as_values(&from_json), "{value}");
        as_values(&typed).as_array().unwrap().len() - 1
    }

    #[test]
    fn typed_links_equal_the_links_read_from_the_json() {
        let (one, two) = (context(1, "first \"quoted\"\nline"), context(2, &"é".repeat(100)));
        assert_eq!(same_links(&one), 1);
        assert_eq!(same_links(&GetContextResponse { context: one.clone(), versions: vec![], versions_next: None }), 1);
        assert_eq!(same_links(&StoreContextResponse { context: one.clone(), deduplicated: false }), 1);
        let list =
            ContextList { contexts: vec![one.clone(), two.clone()], next_cursor: None, recall: Default::default() };
        assert_eq!(same_links(&list), 2);
        let hits = json!({"hits": [
            {"context": one, "scores": {"vector": 0.5, "fuzzy": 0.1, "final": 0.4}},
            {"context": two, "scores": {"vector": 0.4, "fuzzy": 0.1, "final": 0.3}, "related": [{"id": "x", "relation": "r", "type": "note", "content": "c"}]}
        ], "mode": "hybrid", "stages": [], "candidates": 2, "cached": false});
        assert_eq!(same_links(&serde_json::from_value::<SearchResponse>(hits).unwrap()), 2);
        let related = json!({"related": [{"context": two, "depth": 1, "relation": "explains", "via": "c"}]});
        assert_eq!(same_links(&serde_json::from_value::<RelatedList>(related).unwrap()), 1);
        let state = json!({"state": {"agent_id": "a", "session_id": "s", "key": "k", "value": {"id": "x", "session_id": "s"}, "version": 1, "updated_at": "2026-01-01T00:00:00Z"}});
        assert_eq!(same_links(&serde_json::from_value::<AgentStateResponse>(state).unwrap()), 0);
        let session =
            json!({"id": "s", "purpose": "p", "metadata": {}, "created_by": "a", "created_at": "2026-01-01T00:00:00Z"});
        assert_eq!(same_links(&serde_json::from_value::<Session>(session).unwrap()), 0);
        assert_eq!(same_links(&DeleteContextResponse { id: "c".into(), deleted: true }), 0);
    }
}
