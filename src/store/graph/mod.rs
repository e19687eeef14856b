//! The graph store: sessions, contexts with their versions and relations, agent state, and the index
//! journal that makes vector writes repairable after a crash.
//!
//! Architecture invariant: every change to a context is recorded in the index journal in the same
//! transaction as the change itself. A journal entry is cleared only after the vector store has made the
//! matching change durable, so start-up can always bring the vector side back in line with the graph.

pub mod neo4j;
pub mod sqlite;
mod versions;

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::{AgentState, Context, ContextFilter, ContextVersion, ReadScope, Relation, Session, Timestamp};
use crate::error::StoreResult;

/// Result of inserting a context: either new (with its journal sequence) or an existing duplicate.
#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    Inserted { journal_seq: i64 },
    Duplicate(Box<Context>),
}

/// A journal entry whose vector-side change is not yet known to be durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingIndex {
    pub seq: i64,
    pub id: Uuid,
}

/// The current indexable state of an item: the live context with its embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub context: Context,
    pub embedding: Vec<f32>,
}

/// A context reached from another through RELATES_TO edges.
#[derive(Debug, Clone, PartialEq)]
pub struct RelatedContext {
    pub context: Context,
    /// Number of edges from the start (1..=depth).
    pub depth: u32,
    /// The relation of the edge that reached it.
    pub relation: String,
    /// The context the reaching edge came from.
    pub via: Uuid,
}

/// The bookkeeping of a breadth-first walk over RELATES_TO edges, shared by the stores: they fetch one level
/// of edges at a time (one query per level, never one per node), hand them here, then load the contexts
/// reached at that level. Only live contexts the scope may see are reported and walked on, so a hidden or
/// deleted context never appears in an answer, not even as the `via` of another.
#[derive(Debug)]
pub struct RelatedWalk {
    scope: ReadScope,
    now: Timestamp,
    seen: std::collections::HashSet<Uuid>,
    frontier: Vec<Uuid>,
    /// (node, depth, relation, via) of the current level, before `settle`.
    level: Vec<(Uuid, u32, String, Uuid)>,
    reached: Vec<RelatedContext>,
    max_nodes: usize,
}

impl RelatedWalk {
    pub fn new(start: Uuid, max_nodes: usize, scope: ReadScope) -> Self {
        Self {
            scope,
            now: Timestamp::now(),
            seen: [start].into(),
            frontier: vec![start],
            level: Vec::new(),
            reached: Vec::new(),
            max_nodes,
        }
    }

    /// The nodes whose edges the next level needs; empty when the walk is over.
    pub fn frontier(&self) -> &[Uuid] {
        if self.reached.len() >= self.max_nodes { &[] } else { &self.frontier }
    }

    /// Takes one level's edges (from, to, relation), ordered as they should be reached.
    pub fn absorb(&mut self, level: u32, edges: impl IntoIterator<Item = (Uuid, Uuid, String)>) {
        self.level.clear();
        for (from, to, relation) in edges {
            if self.reached.len() + self.level.len() >= self.max_nodes {
                break;
            }
            if self.seen.insert(to) {
                self.level.push((to, level, relation, from));
            }
        }
    }

    /// How many edges the next level takes at most, one per node reached, in the order they are reached:
    /// every node the walk may still take plus every node already seen, so nothing the walk would take is
    /// left out, and a node with millions of edges hands over a bounded answer (the store still reads
    /// its edges to order them).
    pub fn edge_budget(&self) -> usize {
        self.max_nodes.saturating_sub(self.reached.len()) + self.seen.len()
    }

    /// The nodes the last `absorb` reached, whose contexts `settle` needs.
    pub fn level_ids(&self) -> Vec<Uuid> {
        self.level.iter().map(|r| r.0).collect()
    }

    /// Takes the live contexts among `level_ids`: the visible ones are reported and form the next frontier.
    pub fn settle(&mut self, live: Vec<Context>) {
        let mut contexts: std::collections::HashMap<Uuid, Context> = live.into_iter().map(|c| (c.id, c)).collect();
        self.frontier.clear();
        for (node, depth, relation, via) in self.level.drain(..) {
            let Some(context) = contexts.remove(&node) else { continue };
            if self.scope.may_see(&context) && !context.is_expired(self.now) {
                self.frontier.push(node);
                self.reached.push(RelatedContext { context, depth, relation, via });
            }
        }
    }

    /// The contexts reached, nearest first.
    pub fn finish(self) -> Vec<RelatedContext> {
        self.reached
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub sessions: u64,
    pub contexts: u64,
    pub agent_states: u64,
    pub pending_index: u64,
}

/// Which agent state entry: (agent, optional session, key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateKey {
    pub agent_id: String,
    pub session_id: Option<String>,
    pub key: String,
}

impl StateKey {
    pub fn of(state: &AgentState) -> Self {
        Self { agent_id: state.agent_id.clone(), session_id: state.session_id.clone(), key: state.key.clone() }
    }

    /// The id of the entry's vector point and journal entries: derived from the key (a UUIDv8 over its
    /// SHA-256), so every replica and every write of the entry names the same point, and a lock on it can be
    /// taken before the graph is asked.
    pub fn point_id(&self) -> Uuid {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for part in [self.agent_id.as_str(), self.session_id.as_deref().unwrap_or(""), self.key.as_str()] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        let digest = hash.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }
}

/// A state write as the graph committed it: the stored entry (absent after a delete) and the journal entry
/// of its vector point.
#[derive(Debug, Clone, PartialEq)]
pub struct StateWrite {
    pub state: Option<AgentState>,
    pub point_id: Uuid,
    pub journal_seq: i64,
}

/// The indexable state of an agent state entry: the entry with the embedding of the text its value carries.
#[derive(Debug, Clone, PartialEq)]
pub struct StateIndexEntry {
    pub point_id: Uuid,
    pub state: AgentState,
    pub embedding: Vec<f32>,
}

/// The answer to an analyst query: column names and rows of JSON values in column order.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct QueryRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<serde_json::Value>>,
    /// More rows matched than the limit allowed.
    pub truncated: bool,
}

/// Held by an analyst query's work until that work has really stopped (a statement interrupted, not merely
/// abandoned by its caller): it keeps a concurrency slot and the `analyst_queries_running` gauge.
pub struct AnalystTicket {
    pub slot: tokio::sync::OwnedSemaphorePermit,
    pub running: crate::metrics::GaugeGuard,
}

/// An analyst query as the service validated it.
pub struct AnalystRequest<'a> {
    pub query: &'a str,
    pub params: &'a serde_json::Map<String, serde_json::Value>,
    pub limit: usize,
    pub timeout: std::time::Duration,
    /// What the caller may read: stores that scope analyst queries confine the query to it.
    pub scope: &'a ReadScope,
    /// Dropped by the store when the query's work has ended.
    pub ticket: AnalystTicket,
}

/// An analyst query's whole answer, as JSON, at most.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The running size of an answer as JSON, escapes included: refuses past `MAX_ANSWER_BYTES`.
#[derive(Debug, Default)]
pub struct AnswerSize(usize);

impl AnswerSize {
    pub fn add(&mut self, row: &[serde_json::Value]) -> StoreResult<()> {
        let mut written = ByteCount(0);
        serde_json::to_writer(&mut written, row).map_err(|err| crate::error::StoreError::Backend(err.to_string()))?;
        self.0 += written.0 + 1;
        if self.0 > MAX_ANSWER_BYTES {
            return Err(crate::error::StoreError::TooLarge(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes; select fewer rows or columns"
            )));
        }
        Ok(())
    }
}

/// A writer that keeps only the count of bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Occupancy of a backend's connection pool, for /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub max: usize,
    pub in_use: usize,
}

/// The graph side of the store, the source of truth. A backend implements each part below; the split is by
/// concern (and by file in each backend), and `dyn GraphStore` offers all of them.
pub trait GraphStore:
    GraphBackend + AnalystGraph + ContextGraph + RelationGraph + StateGraph + JournalGraph + RecallGraph
{
}

impl<T> GraphStore for T where
    T: GraphBackend + AnalystGraph + ContextGraph + RelationGraph + StateGraph + JournalGraph + RecallGraph
{
}

/// What every backend reports about itself.
#[async_trait]
pub trait GraphBackend: Send + Sync + 'static {
    /// The backend's name in health reports and metrics.
    fn backend(&self) -> &'static str;
    /// A cheap round trip: succeeds when the backend answers.
    async fn ping(&self) -> StoreResult<()>;
    /// Connection pool occupancy, for backends with a pool of connections.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
    /// Where API keys live when the store is shared by replicas (Neo4j: in the graph); None keeps them in the
    /// data dir's `keys.sqlite3`.
    fn shared_keys(&self) -> Option<std::sync::Arc<dyn crate::auth::KeyBackend>> {
        None
    }
    async fn counts(&self) -> StoreResult<StoreCounts>;
}

/// Analyst queries in the backend's own language.
#[async_trait]
pub trait AnalystGraph: Send + Sync + 'static {
    /// The language of analyst queries ("sql" or "cypher") and a summary of what they can read, generated
    /// when the store opened.
    fn query_language(&self) -> &'static str;
    fn query_schema(&self) -> String;
    /// Whether `analyst_query` confines a caller who is not an admin to its read scope. A store that cannot
    /// answers `false`, and the service then runs its analyst queries for admins only.
    fn scoped_analyst_queries(&self) -> bool;
    /// A read-only analyst query with named parameters: at most `limit` rows, stopped after `timeout` or
    /// when the returned future is dropped. Writes, refused constructs, syntax errors and timeouts are
    /// `InvalidQuery`; an answer past the size cap is `TooLarge`.
    async fn analyst_query(&self, request: AnalystRequest<'_>) -> StoreResult<QueryRows>;
}

/// Sessions, contexts and their versions.
#[async_trait]
pub trait ContextGraph: Send + Sync + 'static {
    /// Creates a session; `Conflict` when the id is taken.
    async fn create_session(&self, session: &Session) -> StoreResult<()>;
    async fn get_session(&self, id: &str) -> StoreResult<Option<Session>>;
    /// Sessions ordered by id, starting after `after`, only those in `only` when given.
    async fn list_sessions(
        &self,
        after: Option<&str>,
        limit: usize,
        only: Option<&[String]>,
    ) -> StoreResult<Vec<Session>>;
    /// A live context in the session with this content hash that `scope` may see, if any.
    async fn find_duplicate(
        &self,
        session_id: &str,
        content_hash: &str,
        scope: &ReadScope,
    ) -> StoreResult<Option<Context>>;
    /// Inserts a new context with its embedding and a journal entry, unless a duplicate visible to
    /// `dedup_scope` exists (checked in the same transaction). `NotFound` when the session is missing.
    async fn insert_context(
        &self,
        context: &Context,
        embedding: &[f32],
        dedup_scope: &ReadScope,
    ) -> StoreResult<InsertOutcome>;
    /// Replaces a context by its next version (`updated.version` = current + 1), keeping the current one
    /// as a previous version. Returns the journal sequence, the replaced context and its embedding.
    /// `VersionConflict` when the stored version is not `updated.version - 1`.
    async fn update_context(&self, updated: &Context, embedding: &[f32]) -> StoreResult<(i64, Context, Vec<f32>)>;
    /// Marks a context deleted (hidden from every read) and journals it. Returns the journal sequence
    /// and the deleted context. `VersionConflict` when `expected_version` is given and differs.
    async fn delete_context(&self, id: Uuid, expected_version: Option<i64>) -> StoreResult<(i64, Context)>;
    async fn get_context(&self, id: Uuid) -> StoreResult<Option<Context>>;
    /// The live contexts among `ids`, in no particular order.
    async fn get_contexts(&self, ids: &[Uuid]) -> StoreResult<Vec<Context>>;
    /// Contexts matching the filter, newest first, starting after the context `after`.
    async fn list_contexts(
        &self,
        filter: &ContextFilter,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<Context>>;
    /// Previous versions of a context, newest first: those older than `before` when given, at most
    /// `limit` when given.
    async fn context_versions(
        &self,
        id: Uuid,
        before: Option<i64>,
        limit: Option<usize>,
    ) -> StoreResult<Vec<ContextVersion>>;
    /// Writes previous versions of a live context as they were (import); existing ones are replaced.
    async fn import_versions(&self, id: Uuid, versions: &[ContextVersion]) -> StoreResult<()>;
}

/// Edges between contexts and walks along them.
#[async_trait]
pub trait RelationGraph: Send + Sync + 'static {
    /// Creates or replaces the edge (from)-[relation]->(to). `NotFound` when either end is missing.
    async fn link(&self, relation: &Relation) -> StoreResult<()>;
    /// Contexts reachable from `id` within `depth` edges (outgoing, or both directions), nearest first,
    /// each reported once at its smallest depth; at most `max_nodes` are explored. The walk reports and
    /// passes through only live contexts `scope` may see (see `RelatedWalk`).
    async fn related(
        &self,
        id: Uuid,
        depth: u32,
        relation: Option<&str>,
        both_directions: bool,
        max_nodes: usize,
        scope: &ReadScope,
    ) -> StoreResult<Vec<RelatedContext>>;
    /// The direct neighbours (both directions) of each of `ids` that `scope` may see, at most `per_node` each,
    /// in one round trip: (start id, neighbour). Used to expand search hits without one query per hit.
    async fn neighbours(
        &self,
        ids: &[Uuid],
        per_node: usize,
        scope: &ReadScope,
    ) -> StoreResult<Vec<(Uuid, RelatedContext)>>;
    /// The RELATES_TO edges leaving each of `ids` (export).
    async fn relations_from(&self, ids: &[Uuid]) -> StoreResult<Vec<Relation>>;
}

/// How often, and when last, a context was returned by a search or a read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct RecallStats {
    pub count: u64,
    /// Absent when never recalled.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_recalled_at: Option<Timestamp>,
}

/// Recalls of one context since the last tally was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecallTally {
    pub id: Uuid,
    pub count: u64,
    pub last_at: Timestamp,
}

/// The order of `list_recalled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecallOrder {
    /// Most recalled first.
    Count,
    /// Most recently recalled first.
    LastRecalled,
}

/// Recall statistics: kept beside the contexts (a row or node per recalled context), added to in batches.
#[async_trait]
pub trait RecallGraph: Send + Sync + 'static {
    /// Adds each tally to its context's statistics; contexts deleted meanwhile are skipped.
    async fn record_recalls(&self, tallies: &[RecallTally]) -> StoreResult<()>;
    /// The statistics of those of `ids` recalled at least once.
    async fn recall_stats(&self, ids: &[Uuid]) -> StoreResult<std::collections::HashMap<Uuid, RecallStats>>;
    /// Recalled contexts matching the filter, in `order` (ties by id, newest first), after skipping `offset`.
    async fn list_recalled(
        &self,
        filter: &ContextFilter,
        order: RecallOrder,
        offset: usize,
        limit: usize,
    ) -> StoreResult<Vec<(Context, RecallStats)>>;
}

/// Agent state: keyed values with compare-and-set versions and an optional expiry. Each entry is a node of
/// its agent (and session, when it has one); the embedding of the text its value carries is kept beside it
/// and every change is journaled under the entry's point id (`StateKey::point_id`), as contexts are.
#[async_trait]
pub trait StateGraph: Send + Sync + 'static {
    /// Writes agent state with compare-and-set: `expected_version` None writes unconditionally,
    /// `Some(0)` only creates, `Some(v)` only replaces version v. `embedding` is that of the value's text
    /// (None: the value carries none). Returns the stored state and the journal entry of its point.
    async fn set_state(
        &self,
        state: &AgentState,
        expected_version: Option<i64>,
        embedding: Option<&[f32]>,
    ) -> StoreResult<StateWrite>;
    async fn get_state(&self, key: &StateKey) -> StoreResult<Option<AgentState>>;
    /// States of an agent (in one session, or without session when None) whose key starts with
    /// `prefix`, ordered by key, after `after_key`.
    async fn list_state(
        &self,
        agent_id: &str,
        session_id: Option<&str>,
        prefix: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AgentState>>;
    /// Deletes agent state and journals its point; `NotFound` when absent, `VersionConflict` on a stale
    /// expected version.
    async fn delete_state(&self, key: &StateKey, expected_version: Option<i64>) -> StoreResult<StateWrite>;
    /// Every agent state (live or not yet purged) ordered by (agent, session, key), after `after` (export).
    async fn scan_states(&self, after: Option<&StateKey>, limit: usize) -> StoreResult<Vec<AgentState>>;
    /// Removes at most `limit` agent state entries whose expiry is at or before `now`, journaling their
    /// points in the same transaction; returns those journal entries.
    async fn purge_expired_state(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<PendingIndex>>;
    /// The entries among `point_ids` that have an embedding (others are absent: their point should not exist).
    async fn state_index_entries(&self, point_ids: &[Uuid]) -> StoreResult<Vec<StateIndexEntry>>;
    /// Entries with embeddings in point id order after `after`: the input of a full reindex.
    async fn scan_state_index(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Vec<StateIndexEntry>>;
}

/// The index journal and what repair, rollback and expiry need: every change to a context is journaled in
/// the same transaction, and the journal entry is cleared once the vector side matches.
#[async_trait]
pub trait JournalGraph: Send + Sync + 'static {
    /// Removes a deleted context for good, with its versions, tags and relations; nothing when `id` is not
    /// a deleted context (live, or gone already).
    async fn purge_context(&self, id: Uuid) -> StoreResult<()>;
    /// Undo of `insert_context` after a failed vector write. The change's journal entry stays pending: a
    /// vector write that failed may still have been applied (a timeout), so the vector side is made to
    /// match the graph again by the next repair.
    async fn rollback_insert(&self, id: Uuid) -> StoreResult<()>;
    /// Undo of `update_context` after a failed vector write: `previous` and its embedding become current
    /// again (a kept new embedding would be re-indexed later beside the old text). The journal entry stays
    /// pending, as for `rollback_insert`.
    async fn rollback_update(&self, previous: &Context, previous_embedding: &[f32]) -> StoreResult<()>;
    /// Undo of `delete_context` after a failed vector write. The journal entry stays pending.
    async fn rollback_delete(&self, id: Uuid) -> StoreResult<()>;
    /// Live contexts whose expiry is at or before `now`, at most `limit` (the expiry task removes them).
    async fn expired_contexts(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<Uuid>>;
    /// Journal entries not yet cleared, oldest first.
    async fn pending_index(&self, limit: usize) -> StoreResult<Vec<PendingIndex>>;
    /// Clears journal entries once their vector-side change is durable.
    async fn clear_pending(&self, seqs: &[i64]) -> StoreResult<()>;
    /// The live, indexable state of each of `ids` (deleted or missing ids are absent).
    async fn index_entries(&self, ids: &[Uuid]) -> StoreResult<Vec<IndexEntry>>;
    /// Live contexts with embeddings in id order after `after`: the input of a full reindex.
    async fn scan_index_entries(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Vec<IndexEntry>>;
}
