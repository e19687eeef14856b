//! Analysts' read-only graph queries (query_graph): Cypher on Neo4j, SQL on the embedded SQLite store.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ContextService;
use crate::auth::{Permission, Principal};
use crate::error::{ServiceError, ServiceResult};
use crate::store::graph::{AnalystRequest, AnalystTicket, MAX_ANSWER_BYTES, QueryRows};

pub const DEFAULT_QUERY_ROWS: u32 = 100;
pub const MAX_QUERY_ROWS: u32 = 10_000;
pub const DEFAULT_QUERY_TIMEOUT_MS: u64 = 5_000;
pub const MAX_QUERY_TIMEOUT_MS: u64 = 60_000;
pub const MAX_QUERY_BYTES: usize = 20_000;
/// Analyst queries that may run at once; more are refused with `resource_exhausted`.
pub const MAX_CONCURRENT_QUERIES: usize = 4;

/// Arguments of `query_graph`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryGraphRequest {
    /// One read-only statement in the store's language (see the tool description): Cypher on Neo4j,
    /// SQL (SQLite) on the embedded store.
    pub query: String,
    /// Named parameters: `$name` in Cypher, `:name` in SQL.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// At most this many rows (default 100, at most 10000); `truncated` says when more matched.
    #[serde(default)]
    pub limit: Option<u32>,
    /// Stop the query after this many milliseconds (default 5000, at most 60000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Result of `query_graph`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QueryGraphResponse {
    /// "sql" or "cypher".
    pub language: String,
    #[serde(flatten)]
    pub result: QueryRows,
}

impl ContextService {
    /// The query_graph tool description: the language, what a caller sees, and a summary of the schema,
    /// from the open store.
    pub fn query_graph_description(&self) -> String {
        let scope = if self.graph.scoped_analyst_queries() {
            "Sees exactly what the caller may read elsewhere: admins every row; other callers the sessions their \
             key is limited to, public contexts and their own private ones (never admin_only), previous versions \
             filtered the same way, relations between visible contexts and their own agent state, without \
             embeddings, deleted or expired rows."
        } else {
            "Reads the whole graph, so it needs the admin permission on this backend."
        };
        format!(
            "Read-only analyst query (needs the query permission). {scope} No file access, procedures outside \
             schema introspection, or writes; answers are capped at {} rows and {} bytes. Language: {}. {}",
            MAX_QUERY_ROWS,
            MAX_ANSWER_BYTES,
            self.graph.query_language(),
            self.graph.query_schema()
        )
    }

    pub async fn query_graph(
        &self,
        principal: &Principal,
        request: QueryGraphRequest,
    ) -> ServiceResult<QueryGraphResponse> {
        principal.require(Permission::Query)?;
        let query = request.query.trim();
        if query.is_empty() {
            return Err(ServiceError::invalid("query must not be empty"));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(ServiceError::invalid(format!("query is longer than {MAX_QUERY_BYTES} bytes")));
        }
        let limit = request.limit.unwrap_or(DEFAULT_QUERY_ROWS);
        if !(1..=MAX_QUERY_ROWS).contains(&limit) {
            return Err(ServiceError::invalid(format!("limit must be between 1 and {MAX_QUERY_ROWS}")));
        }
        let timeout_ms = request.timeout_ms.unwrap_or(DEFAULT_QUERY_TIMEOUT_MS);
        if !(1..=MAX_QUERY_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(ServiceError::invalid(format!("timeout_ms must be between 1 and {MAX_QUERY_TIMEOUT_MS}")));
        }
        let scope = principal.read_scope(&principal.agent_id);
        if !scope.admin && !self.graph.scoped_analyst_queries() {
            return Err(ServiceError::PermissionDenied(format!(
                "analyst queries on {} read the whole graph, so they need the admin permission",
                self.graph.backend()
            )));
        }
        // Each analyst query holds a blocking thread (or a backend connection) for up to its timeout.
        let slot = self.analyst_slots.clone().try_acquire_owned().map_err(|_| {
            ServiceError::ResourceExhausted(format!(
                "{MAX_CONCURRENT_QUERIES} analyst queries are already running; retry when one has finished"
            ))
        })?;
        let running = crate::metrics::GaugeExt::guard(&self.metrics.analyst_queries_running);
        let analyst = AnalystRequest {
            ticket: AnalystTicket { slot, running },
            query,
            params: &request.params,
            limit: limit as usize,
            timeout: Duration::from_millis(timeout_ms),
            scope: &scope,
        };
        let result = self.graph.analyst_query(analyst).await?;
        Ok(QueryGraphResponse { language: self.graph.query_language().to_string(), result })
    }
}
