//! Requests and responses of the service operations. They are the tools' input and output schemas too,
//! so every field is documented for the agents that read them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::domain::{AgentState, Context, ContextFilterArgs, ContextVersion, Session, Visibility};

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// Optional id (letters, digits, - _ . : @ /; at most 128). Generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// What the session is for, in a sentence.
    pub purpose: String,
    /// Free-form JSON object.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// The creating agent (defaults to the caller).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetSessionRequest {
    /// The session id.
    pub session_id: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSessionsRequest {
    /// Page size, 1-200 (default 20).
    #[serde(default)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SessionList {
    pub sessions: Vec<Session>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreContextRequest {
    /// The session to store into (must exist).
    pub session_id: String,
    /// The text to remember (at most 64 KiB).
    pub content: String,
    /// A short kind such as note, decision, code, summary (default "note").
    #[serde(default, rename = "type")]
    pub context_type: Option<String>,
    /// Up to 32 tags; stored lower-cased.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Free-form JSON object (at most 16 KiB).
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// public (default): every agent in the session; private: author and admins; admin_only.
    #[serde(default)]
    pub visibility: Option<Visibility>,
    /// Forget the context after this many seconds.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
    /// The authoring agent (defaults to the caller).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StoreContextResponse {
    pub context: Context,
    /// True when identical content already existed in the session and was returned instead.
    pub deduplicated: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetContextRequest {
    /// The context id (UUID).
    pub id: String,
    /// Also return previous versions, newest first: the 20 newest unless `versions_limit` says otherwise.
    #[serde(default)]
    pub include_versions: bool,
    /// How many previous versions (default 20, at most 100).
    #[serde(default)]
    pub versions_limit: Option<usize>,
    /// Only versions older than this one: a response's `versions_next`, for the next page.
    #[serde(default)]
    pub versions_before: Option<i64>,
    /// The reading agent (defaults to the caller).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct GetContextResponse {
    pub context: Context,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub versions: Vec<ContextVersion>,
    /// More versions are older than these: pass it as `versions_before` for the next page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub versions_next: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateContextRequest {
    /// The context id (UUID).
    pub id: String,
    /// The version you read; the update fails with `conflict` if the context changed since.
    #[serde(default)]
    pub expected_version: Option<i64>,
    /// New content (re-embedded).
    #[serde(default)]
    pub content: Option<String>,
    /// New type.
    #[serde(default, rename = "type")]
    pub context_type: Option<String>,
    /// New tags (replace the old ones).
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// New metadata (replaces the old object).
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// New visibility.
    #[serde(default)]
    pub visibility: Option<Visibility>,
    /// New time to live from now, in seconds.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
    /// The updating agent (defaults to the caller); only the author or an admin may update.
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteContextRequest {
    /// The context id (UUID).
    pub id: String,
    /// Delete only if the context is still at this version.
    #[serde(default)]
    pub expected_version: Option<i64>,
    /// The deleting agent (defaults to the caller); only the author or an admin may delete.
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeleteContextResponse {
    pub id: String,
    pub deleted: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListContextsRequest {
    #[serde(flatten)]
    pub filter: ContextFilterArgs,
    /// Page size, 1-200 (default 20).
    #[serde(default)]
    pub limit: Option<usize>,
    /// The order: `newest` (the default), `most_recalled` or `last_recalled`; the last two list only contexts
    /// returned by a search or read at least once, with their `recall` statistics.
    #[serde(default)]
    pub sort: ListOrder,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// The reading agent (defaults to the caller).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListOrder {
    #[default]
    Newest,
    MostRecalled,
    LastRecalled,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ContextList {
    pub contexts: Vec<Context>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// For the recall orders: each listed context's statistics, by id.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty", default)]
    pub recall: std::collections::BTreeMap<String, crate::store::graph::RecallStats>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// What to look for, in natural language (at most 2048 characters).
    pub query: String,
    #[serde(flatten)]
    pub filter: ContextFilterArgs,
    /// Hits to return, 1-200 (default 20).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Candidates each stage (vector, lexical) brings to the rerank, limit-1000 (default max(3 x limit, 30)).
    #[serde(default)]
    pub candidates: Option<usize>,
    /// Drop hits whose fuzzy text similarity is below this, 0-1 (default 0: keep all).
    #[serde(default)]
    pub fuzzy_threshold: Option<f64>,
    /// Weight of the retrieval score (vector and lexical) in the final score, 0-1 (default 0.85; the rest is
    /// fuzzy).
    #[serde(default)]
    pub vector_weight: Option<f64>,
    /// Share of the lexical (BM25) score within the retrieval score, 0-1 (default 0.5; the rest is vector; both scaled by their own spread).
    #[serde(default)]
    pub lexical_weight: Option<f64>,
    /// The stages to run, any of `vector`, `lexical`, `fuzzy` (default all three). Candidates come from the
    /// vector and lexical stages (from the prefiltered set when neither runs); fuzzy reranks them.
    #[serde(default)]
    pub stages: Option<Vec<Stage>>,
    /// Also return the contexts directly related to each hit.
    #[serde(default)]
    pub expand_related: bool,
    /// Weight of recency (1 when written or recalled just now, halving each week since) in the final
    /// score, 0-1 (default 0: off). The vector and fuzzy scores share what the two weights leave.
    #[serde(default)]
    pub recency_weight: Option<f64>,
    /// Weight of how often the context was recalled before (1 - 0.9^recalls) in the final score, 0-1
    /// (default 0: off). recency_weight + recall_weight is at most 1.
    #[serde(default)]
    pub recall_weight: Option<f64>,
    /// The searching agent (defaults to the caller).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct ScoreBreakdown {
    /// Cosine similarity of query and content (0 when the vector stage did not run).
    pub vector: f64,
    /// BM25 score of the lexical stage relative to the best candidate's, 0-1 (absent when it did not run;
    /// 0 for a candidate sharing no term with the query).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lexical: Option<f64>,
    /// Fuzzy text similarity, 0-1 (0 when the fuzzy stage did not run).
    pub fuzzy: f64,
    /// The fused score hits are ordered by.
    #[serde(rename = "final")]
    pub final_score: f64,
    /// Recency score, 0-1, when `recency_weight` is set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub recency: Option<f64>,
    /// Recall score, 0-1, when `recall_weight` is set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub recall: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RelatedSummary {
    pub id: String,
    pub relation: String,
    #[serde(rename = "type")]
    pub context_type: String,
    /// The related context's text, cut to its first 500 characters (`get_context` has it whole).
    pub content: String,
    /// Whether `content` was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SearchHit {
    pub context: Context,
    pub scores: ScoreBreakdown,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub related: Vec<RelatedSummary>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SearchMode {
    /// The stages asked for all ran.
    Hybrid,
    /// The embedder was unavailable: lexical candidates and the prefiltered set, reranked by fuzzy similarity.
    LexicalFuzzy,
    /// The embedder was unavailable and there is no lexical index: fuzzy similarity over the prefiltered set.
    FuzzyOnly,
}

/// A stage of the search pipeline.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Hash, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Vector,
    Lexical,
    Fuzzy,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SearchResponse {
    pub hits: Vec<SearchHit>,
    pub mode: SearchMode,
    /// The stages that ran.
    pub stages: Vec<Stage>,
    /// Why the search was degraded, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded_reason: Option<String>,
    /// Candidates the rerank considered.
    pub candidates: usize,
    /// True when served from the result cache.
    pub cached: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkContextsRequest {
    /// The source context id.
    pub from_id: String,
    /// The target context id.
    pub to_id: String,
    /// The kind of relationship, e.g. depends_on, answers, refines (letters, digits, - _ . : @ /).
    pub relation: String,
    /// Free-form JSON object on the edge.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// The linking agent (defaults to the caller).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct LinkContextsResponse {
    pub from_id: String,
    pub to_id: String,
    pub relation: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetRelatedRequest {
    /// The start context id.
    pub id: String,
    /// How many edges to follow, 1-3 (default 1).
    #[serde(default)]
    pub depth: Option<u32>,
    /// Follow only edges of this relation.
    #[serde(default)]
    pub relation: Option<String>,
    /// Follow edges in both directions (default: outgoing only).
    #[serde(default)]
    pub both_directions: bool,
    /// Page size, 1-200 (default 20). Nearest first.
    #[serde(default)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// The reading agent (defaults to the caller).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RelatedItem {
    pub context: Context,
    pub depth: u32,
    pub relation: String,
    /// The context the edge came from.
    pub via: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RelatedList {
    pub related: Vec<RelatedItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAgentStateRequest {
    /// The state key (letters, digits, - _ . : @ /; at most 128).
    pub key: String,
    /// Any JSON value (at most 64 KiB).
    pub value: Value,
    /// Scope the state to a session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Compare-and-set: 0 = create only, n = replace only version n. Absent = unconditional.
    #[serde(default)]
    pub expected_version: Option<i64>,
    /// Forget the state after this many seconds.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
    /// The owning agent (defaults to the caller).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentStateKeyRequest {
    /// The state key.
    pub key: String,
    /// The session the state is scoped to, if any.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Compare-and-delete (delete only): delete only version n.
    #[serde(default)]
    pub expected_version: Option<i64>,
    /// The owning agent (defaults to the caller).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AgentStateResponse {
    pub state: AgentState,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListAgentStateRequest {
    /// Only keys starting with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The session the states are scoped to (absent: states without session).
    #[serde(default)]
    pub session_id: Option<String>,
    /// Page size, 1-200 (default 20). Ordered by key.
    #[serde(default)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// The owning agent (defaults to the caller).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AgentStateList {
    pub states: Vec<AgentState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeleteAgentStateResponse {
    pub key: String,
    pub deleted: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecallAgentStateRequest {
    /// What to recall, in natural language (at most 2048 characters), e.g. "what did I decide about retries?".
    pub query: String,
    /// Only state scoped to this session (absent: all of the agent's state, with or without session).
    #[serde(default)]
    pub session_id: Option<String>,
    /// Hits to return, 1-200 (default 20).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Candidates each stage (vector, lexical) brings to the rerank, limit-1000 (default max(3 x limit, 30)).
    #[serde(default)]
    pub candidates: Option<usize>,
    /// Drop hits whose fuzzy text similarity is below this, 0-1 (default 0: keep all).
    #[serde(default)]
    pub fuzzy_threshold: Option<f64>,
    /// Weight of the retrieval score in the final score, 0-1 (default 0.85; the rest is fuzzy).
    #[serde(default)]
    pub vector_weight: Option<f64>,
    /// The owning agent (defaults to the caller; admins may name any agent).
    #[serde(default)]
    pub agent_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StateHit {
    pub state: AgentState,
    /// Scored on the text the value carries: the key, then each string (and the numbers and booleans beside
    /// them) after its path of object keys.
    pub scores: ScoreBreakdown,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RecallAgentStateResponse {
    pub hits: Vec<StateHit>,
    pub mode: SearchMode,
    /// The stages that ran.
    pub stages: Vec<Stage>,
    /// Why the recall was degraded, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded_reason: Option<String>,
    /// Candidates the rerank considered.
    pub candidates: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ItemCounts {
    pub sessions: u64,
    pub contexts: u64,
    pub agent_states: u64,
    /// Writes whose vector side is not yet flushed.
    pub pending_index: u64,
    pub vectors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MetricsSummary {
    /// Store-wide counts; present for admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<ItemCounts>,
    /// Process-wide cache counters; present for callers with the query or admin permission (they move with
    /// every caller's requests, so a plain reader could test guesses of other agents' text with them).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub caches: Option<CacheCounters>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CacheCounters {
    pub embed_cache_hits: u64,
    pub embed_cache_misses: u64,
    pub embed_cache_hit_ratio: f64,
    pub search_cache_hits: u64,
    pub search_cache_misses: u64,
}
