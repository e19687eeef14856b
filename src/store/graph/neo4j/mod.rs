//! The scale-out graph store on Neo4j 5.26+ (neo4rs, Bolt 4.4): the same `GraphStore` contract as the embedded
//! SQLite store. Every statement is a file in `cypher/` (loaded with `include_str!`, parameters only).
//!
//! Shape of the graph: (Agent)-[:AUTHORED]->(Context)-[:IN_SESSION]->(Session), (Context)-[:TAGGED]->(Tag),
//! (Context)-[:RELATES_TO {relation}]->(Context), (Context)-[:SUPERSEDES]->(ContextVersion), (AgentState),
//! (IndexJournal). Context metadata is kept as JSON text plus one `m.<key>` property per top-level scalar (or
//! list of scalars) so filters can match it. Concurrency: a transaction takes its write lock first (a `_lock`
//! property, removed before commit), so read-check-write sequences (dedup, versions, compare-and-set) are
//! serialised the way the embedded store's single writer serialises them. Transient errors (deadlocks, leader
//! switches, dropped connections) are retried with backoff a few times; a backend that stays unreachable
//! opens a circuit breaker so calls fail fast with `Unavailable` until it answers again.

use super::{GraphBackend, PoolStatus, StoreCounts};
use crate::error::{StoreError, StoreResult};
use crate::store::breaker::CircuitBreaker;
use async_trait::async_trait;
use neo4rs::{ConfigBuilder, Graph, Query, Row, Txn};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

mod cypher {
    pub const SCHEMA: &str = include_str!("../../../../cypher/schema.cypher");
    pub const SESSION_CREATE: &str = include_str!("../../../../cypher/session_create.cypher");
    pub const SESSION_GET: &str = include_str!("../../../../cypher/session_get.cypher");
    pub const SESSION_LIST: &str = include_str!("../../../../cypher/session_list.cypher");
    pub const SESSION_LOCK: &str = include_str!("../../../../cypher/session_lock.cypher");
    pub const CONTEXT_DUPLICATE: &str = include_str!("../../../../cypher/context_duplicate.cypher");
    pub const CONTEXT_INSERT: &str = include_str!("../../../../cypher/context_insert.cypher");
    pub const CONTEXT_LOCK: &str = include_str!("../../../../cypher/context_lock.cypher");
    pub const CONTEXT_UPDATE: &str = include_str!("../../../../cypher/context_update.cypher");
    pub const CONTEXT_RESTORE: &str = include_str!("../../../../cypher/context_restore.cypher");
    pub const CONTEXT_SET_DELETED: &str = include_str!("../../../../cypher/context_set_deleted.cypher");
    pub const CONTEXT_PURGE: &str = include_str!("../../../../cypher/context_purge.cypher");
    pub const CONTEXT_REMOVE: &str = include_str!("../../../../cypher/context_remove.cypher");
    pub const CONTEXT_GET_MANY: &str = include_str!("../../../../cypher/context_get_many.cypher");
    pub const CONTEXT_LIST: &str = include_str!("../../../../cypher/context_list.cypher");
    pub const CONTEXT_LIST_IN_SESSION: &str = include_str!("../../../../cypher/context_list_in_session.cypher");
    pub const CONTEXT_VERSIONS: &str = include_str!("../../../../cypher/context_versions.cypher");
    pub const RELATION_LINK: &str = include_str!("../../../../cypher/relation_link.cypher");
    pub const RELATION_STEP: &str = include_str!("../../../../cypher/relation_step.cypher");
    pub const RELATION_NEIGHBOURS: &str = include_str!("../../../../cypher/relation_neighbours.cypher");
    pub const STATE_LOCK: &str = include_str!("../../../../cypher/state_lock.cypher");
    pub const STATE_WRITE: &str = include_str!("../../../../cypher/state_write.cypher");
    pub const STATE_GET: &str = include_str!("../../../../cypher/state_get.cypher");
    pub const STATE_LIST: &str = include_str!("../../../../cypher/state_list.cypher");
    pub const STATE_DELETE: &str = include_str!("../../../../cypher/state_delete.cypher");
    pub const JOURNAL_ADD: &str = include_str!("../../../../cypher/journal_add.cypher");
    pub const JOURNAL_PENDING: &str = include_str!("../../../../cypher/journal_pending.cypher");
    pub const JOURNAL_CLEAR: &str = include_str!("../../../../cypher/journal_clear.cypher");
    pub const INDEX_ENTRIES: &str = include_str!("../../../../cypher/index_entries.cypher");
    pub const INDEX_SCAN: &str = include_str!("../../../../cypher/index_scan.cypher");
    pub const CONTEXT_EXPIRED: &str = include_str!("../../../../cypher/context_expired.cypher");
    pub const STATE_PURGE_EXPIRED: &str = include_str!("../../../../cypher/state_purge_expired.cypher");
    pub const RELATIONS_FROM: &str = include_str!("../../../../cypher/relations_from.cypher");
    pub const STATE_SCAN: &str = include_str!("../../../../cypher/state_scan.cypher");
    pub const STATE_INDEX_ENTRIES: &str = include_str!("../../../../cypher/state_index_entries.cypher");
    pub const RECALL_RECORD: &str = include_str!("../../../../cypher/recall_record.cypher");
    pub const RECALL_STATS: &str = include_str!("../../../../cypher/recall_stats.cypher");
    pub const RECALL_LIST: &str = include_str!("../../../../cypher/recall_list.cypher");
    pub const STATE_INDEX_SCAN: &str = include_str!("../../../../cypher/state_index_scan.cypher");
    pub const VERSIONS_IMPORT: &str = include_str!("../../../../cypher/versions_import.cypher");
    pub const COUNTS: &str = include_str!("../../../../cypher/counts.cypher");
    pub const STATE_GET_MANY: &str = include_str!("../../../../cypher/state_get_many.cypher");
    pub const KEY_INSERT: &str = include_str!("../../../../cypher/key_insert.cypher");
    pub const KEY_FIRST_LOCK: &str = include_str!("../../../../cypher/key_first_lock.cypher");
    pub const KEY_LIST: &str = include_str!("../../../../cypher/key_list.cypher");
    pub const KEY_REVOKE: &str = include_str!("../../../../cypher/key_revoke.cypher");
    pub const KEY_ACTIVE: &str = include_str!("../../../../cypher/key_active.cypher");
}

/// Connection settings of the Neo4j store.
#[derive(Debug, Clone)]
pub struct Neo4jOptions {
    pub uri: String,
    pub user: String,
    pub password: String,
    /// None = the server's default database.
    pub database: Option<String>,
    pub max_connections: usize,
    pub fetch_size: usize,
    /// How long a call waits for a pooled connection before failing with `Unavailable`.
    pub acquire_timeout: Duration,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// How long one call (a transaction with its retries) may take.
    pub call_timeout: Duration,
    /// Consecutive unreachable calls that open the circuit, and how long it stays open.
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
}

/// What analysts' Cypher can read: the model of this store (Neo4j itself is schemaless).
const MODEL: &str = "Neo4j, Cypher in a READ transaction. (:Agent {id})-[:AUTHORED]->(:Context {id, session_id, \
agent_id, type, content, tags, metadata (JSON text), `m.<key>` (top-level metadata scalars), visibility, created_at, \
updated_at, version, expires_at, content_hash, deleted, embedding})-[:IN_SESSION]->(:Session {id, purpose, metadata, \
created_by, created_at}); (:Context)-[:TAGGED]->(:Tag {name}); (:Context)-[:RELATES_TO {relation, metadata, \
created_at, created_by}]->(:Context); (:Context)-[:SUPERSEDES]->(:ContextVersion {context_id, version, type, content, tags, \
metadata, visibility, updated_at}); (:AgentState {agent_id, session_id ('' = none), key, value (JSON text), version, \
updated_at, expires_at}). Times are milliseconds since the Unix epoch; filter deleted contexts with NOT c.deleted.";

/// Cheap to clone: clones share the driver's pool, the permits and the breaker (the key store is a clone).
#[derive(Clone)]
pub struct Neo4jGraphStore {
    graph: Graph,
    /// MODEL plus the labels and relationship types found at start-up.
    schema: String,
    /// One permit per pooled connection: bounds waiting and tells how many are in use.
    permits: Arc<Semaphore>,
    options: Neo4jOptions,
    breaker: Arc<CircuitBreaker>,
    /// Point reads coalesced into shared statements (see `lookups`); None in the clone that runs them.
    lookups: Option<Arc<lookups::Lookups>>,
}

/// What a transaction body can fail with: a store-level answer, or the driver.
enum Failure {
    Store(StoreError),
    Driver(neo4rs::Error),
}

impl From<neo4rs::Error> for Failure {
    fn from(err: neo4rs::Error) -> Self {
        Failure::Driver(err)
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Failure::Store(err)
    }
}

impl From<neo4rs::DeError> for Failure {
    fn from(err: neo4rs::DeError) -> Self {
        Failure::Store(StoreError::Backend(format!("unexpected Neo4j row: {err}")))
    }
}

type TxResult<T> = Result<T, Failure>;

/// Runs `$attempt` (a future of `TxResult`) admitted by the circuit breaker and bounded by the pool, again
/// after a pause while it fails with a transient error (see `settle`).
macro_rules! attempts {
    ($store:ident, $attempt:expr) => {{
        $store
            .guarded(async {
                let _permit = $store.permit().await?;
                let mut attempt = 0u32;
                loop {
                    let result: $crate::store::graph::neo4j::TxResult<_> = $attempt.await;
                    if let Some(done) = $store.settle(result, &mut attempt).await {
                        break done;
                    }
                }
            })
            .await
    }};
}

/// Runs the body in one write transaction (`$txn: &mut Txn`), committed on success and rolled back
/// otherwise, with `attempts!`.
macro_rules! transaction {
    ($store:expr, |$txn:ident| $body:expr) => {{
        let store = $store;
        attempts!(store, async {
            let mut owned = store.begin().await?;
            let $txn = &mut owned;
            let outcome: $crate::store::graph::neo4j::TxResult<_> = async { $body }.await;
            store.finish(owned, outcome).await
        })
    }};
}

/// Runs a body of reads, each its own auto-commit statement (`$txn: &mut AutoCommit`, see `rows`), with
/// `attempts!`. For reads of one statement, or of several that need no common snapshot.
macro_rules! read {
    ($store:expr, |$txn:ident| $body:expr) => {{
        let store = $store;
        attempts!(store, async {
            let mut auto = $crate::store::graph::neo4j::AutoCommit(&store.graph);
            let $txn = &mut auto;
            $body
        })
    }};
}

// The parts below use `transaction!` and `read!`, so they are declared after it.
mod analyst;
mod contexts;
mod cypher_guard;
mod journal;
mod keys;
mod lookups;
mod recalls;
mod relations;
mod rows;
mod state;

const RETRIES: u32 = 4;

/// Whether the driver error is worth another attempt: transient server errors and broken connections.
fn retryable(err: &neo4rs::Error) -> bool {
    match err {
        neo4rs::Error::Neo4j(e) => {
            matches!(e.kind(), neo4rs::Neo4jErrorKind::Transient) || e.code().starts_with("Neo.TransientError")
        }
        other => unreachable_error(other),
    }
}

/// Errors that mean the server could not be reached or the connection broke.
fn unreachable_error(err: &neo4rs::Error) -> bool {
    matches!(
        err,
        neo4rs::Error::IOError { .. }
            | neo4rs::Error::ConnectionError
            | neo4rs::Error::ConnectionTimedOut
            | neo4rs::Error::ServerUnavailableError(_)
            | neo4rs::Error::RoutingTableRefreshFailed(_)
            | neo4rs::Error::IncompleteBoltExchange
            | neo4rs::Error::RequestIgnoredError
    )
}

fn store_error(err: neo4rs::Error) -> StoreError {
    if unreachable_error(&err) {
        return StoreError::Unavailable(format!("neo4j: {err}"));
    }
    match &err {
        neo4rs::Error::Neo4j(e) if e.code() == "Neo.ClientError.Schema.ConstraintValidationFailed" => {
            StoreError::Conflict(e.message().to_string())
        }
        neo4rs::Error::Neo4j(e) if e.code().starts_with("Neo.TransientError") => {
            StoreError::Unavailable(format!("neo4j: {err}"))
        }
        _ => StoreError::Backend(format!("neo4j: {err}")),
    }
}

fn failure_into_store(failure: Failure) -> StoreError {
    match failure {
        Failure::Store(err) => err,
        Failure::Driver(err) => store_error(err),
    }
}

fn query(text: &str) -> Query {
    Query::new(text.to_string())
}

/// Where a statement runs: in an explicit transaction (`transaction!`), or on its own as an auto-commit
/// query (`read!`).
trait Statements: Send {
    fn fetch(&mut self, query: Query) -> impl Future<Output = TxResult<Vec<Row>>> + Send;
}

impl Statements for Txn {
    async fn fetch(&mut self, query: Query) -> TxResult<Vec<Row>> {
        let mut stream = self.execute(query).await?;
        let mut rows = Vec::new();
        while let Some(row) = stream.next(self.handle()).await? {
            rows.push(row);
        }
        Ok(rows)
    }
}

/// One statement as an auto-commit query: RUN and PULL go out together and the answer comes back in one
/// round trip, where a transaction needs BEGIN, RUN, PULL and COMMIT. It runs in write access mode, so on a
/// cluster it goes where writes go and reads what this replica just wrote.
struct AutoCommit<'a>(&'a Graph);

impl Statements for AutoCommit<'_> {
    async fn fetch(&mut self, query: Query) -> TxResult<Vec<Row>> {
        let mut stream = self.0.execute(query).await?;
        let mut rows = Vec::new();
        while let Some(row) = stream.next().await? {
            rows.push(row);
        }
        Ok(rows)
    }
}

/// Runs a statement and collects its rows.
async fn rows(txn: &mut impl Statements, query: Query) -> TxResult<Vec<Row>> {
    txn.fetch(query).await
}

impl Neo4jGraphStore {
    /// Connects, checks the server answers, and applies the schema.
    pub async fn connect(options: &Neo4jOptions) -> StoreResult<Self> {
        let mut config = ConfigBuilder::default()
            .uri(options.uri.clone())
            .user(options.user.clone())
            .password(options.password.clone())
            .max_connections(options.max_connections.max(1))
            .fetch_size(options.fetch_size.max(1))
            .connection_timeout(options.connect_timeout);
        if let Some(database) = &options.database {
            config = config.db(database.clone());
        }
        let config = config.build().map_err(store_error)?;
        let graph = Graph::connect(config).map_err(store_error)?;
        let mut store = Self {
            graph,
            schema: MODEL.to_string(),
            permits: Arc::new(Semaphore::new(options.max_connections.max(1))),
            options: options.clone(),
            breaker: Arc::new(CircuitBreaker::new("neo4j", options.breaker_threshold, options.breaker_cooldown)),
            lookups: None,
        };
        store.apply_schema().await?;
        store.schema = store.describe().await?;
        store.lookups = Some(Arc::new(lookups::Lookups::start(store.clone())));
        Ok(store)
    }

    /// The model plus what the database holds now (labels, relationship types, indexes).
    async fn describe(&self) -> StoreResult<String> {
        let listed = transaction!(self, |txn| {
            let mut lists = Vec::new();
            for (statement, column) in [
                ("CALL db.labels() YIELD label RETURN label ORDER BY label", "label"),
                ("CALL db.relationshipTypes() YIELD relationshipType AS t RETURN t ORDER BY t", "t"),
                ("SHOW INDEXES YIELD name RETURN name ORDER BY name", "name"),
            ] {
                let names: Vec<String> = rows(txn, query(statement))
                    .await?
                    .iter()
                    .map(|r| r.get::<String>(column))
                    .collect::<Result<_, _>>()?;
                lists.push(names.join(", "));
            }
            Ok(lists)
        })?;
        Ok(format!(
            "{MODEL} Present now: labels [{}]; relationship types [{}]; indexes [{}].",
            listed[0], listed[1], listed[2]
        ))
    }

    async fn apply_schema(&self) -> StoreResult<()> {
        let code: Vec<&str> = cypher::SCHEMA.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
        let code = code.join("\n");
        let statements: Vec<&str> = code.split(';').map(str::trim).filter(|s| !s.is_empty()).collect();
        // Schema statements each run in a transaction of their own. Replicas starting together on a new
        // database race to create the same index: `IF NOT EXISTS` checks before the other's commit, so the
        // loser is told an equivalent rule exists, which is what it wanted.
        for statement in statements {
            let applied = transaction!(self, |txn| {
                txn.run(query(statement)).await?;
                Ok(())
            });
            match applied {
                Err(StoreError::Backend(message)) if message.contains("EquivalentSchemaRuleAlreadyExists") => {
                    tracing::info!(statement, "another replica created this schema rule first");
                }
                other => other?,
            }
        }
        Ok(())
    }

    pub fn circuit_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Calls the backend through the circuit breaker.
    async fn guarded<T>(&self, call: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        self.breaker.call(self.options.call_timeout, call).await
    }

    /// A pool slot, waited for at most `acquire_timeout`.
    async fn permit(&self) -> StoreResult<tokio::sync::SemaphorePermit<'_>> {
        tokio::time::timeout(self.options.acquire_timeout, self.permits.acquire())
            .await
            .map_err(|_| StoreError::Unavailable("neo4j: no pooled connection became free in time".into()))?
            .map_err(|_| StoreError::Unavailable("neo4j: pool closed".into()))
    }

    async fn begin(&self) -> TxResult<Txn> {
        match tokio::time::timeout(self.options.connect_timeout, self.graph.start_txn()).await {
            Ok(txn) => Ok(txn?),
            Err(_) => Err(Failure::Driver(neo4rs::Error::ConnectionTimedOut)),
        }
    }

    /// Commits after a successful body, rolls back otherwise.
    async fn finish<T>(&self, txn: Txn, outcome: TxResult<T>) -> TxResult<T> {
        match outcome {
            Ok(value) => {
                txn.commit().await?;
                Ok(value)
            }
            Err(err) => {
                let _ = txn.rollback().await;
                Err(err)
            }
        }
    }

    /// After an attempt: the final result, or None when the attempt should be repeated (after a pause).
    async fn settle<T>(&self, result: TxResult<T>, attempt: &mut u32) -> Option<StoreResult<T>> {
        match result {
            Err(Failure::Driver(err)) if retryable(&err) && *attempt < RETRIES => {
                tracing::debug!(error = %err, attempt = *attempt, "retrying a Neo4j transaction");
                let base = 20u64 << *attempt;
                tokio::time::sleep(Duration::from_millis(base + fastrand::u64(..base))).await;
                *attempt += 1;
                None
            }
            other => Some(other.map_err(failure_into_store)),
        }
    }
}

#[async_trait]
impl GraphBackend for Neo4jGraphStore {
    fn shared_keys(&self) -> Option<Arc<dyn crate::auth::KeyBackend>> {
        Some(Arc::new(self.clone()))
    }

    fn backend(&self) -> &'static str {
        "neo4j"
    }

    async fn ping(&self) -> StoreResult<()> {
        read!(self, |txn| {
            rows(txn, query("RETURN 1")).await?;
            Ok(())
        })
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        let max = self.options.max_connections.max(1);
        Some(PoolStatus { max, in_use: max - self.permits.available_permits() })
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        read!(self, |txn| {
            let found = rows(txn, query(cypher::COUNTS)).await?;
            let row = found.first().ok_or_else(|| StoreError::Backend("counts returned no row".into()))?;
            let count = |name: &str| -> TxResult<u64> { Ok(row.get::<i64>(name)? as u64) };
            Ok(StoreCounts {
                sessions: count("sessions")?,
                contexts: count("contexts")?,
                agent_states: count("agent_states")?,
                pending_index: count("pending_index")?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::journal::journal_seq;
    use super::rows::*;
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_statement_file_is_parameterised_not_empty() {
        for text in [cypher::SCHEMA, cypher::CONTEXT_LIST, cypher::CONTEXT_LIST_IN_SESSION, cypher::CONTEXT_INSERT] {
            assert!(text.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//")));
        }
        assert!(cypher::CONTEXT_LIST_IN_SESSION.contains("{session_id: $session_id}"));
    }

    #[test]
    fn metadata_scalars_become_filterable_properties() {
        assert!(filterable(&Value::from("x")));
        assert!(filterable(&serde_json::json!([1, 2])));
        assert!(!filterable(&serde_json::json!([1, "a"])));
        assert!(!filterable(&serde_json::json!({"nested": true})));
        assert!(!filterable(&Value::Null));
    }

    #[test]
    fn journal_sequences_grow_with_time() {
        let first = journal_seq();
        std::thread::sleep(Duration::from_millis(2));
        assert!(journal_seq() > first);
    }
}
