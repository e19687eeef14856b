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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use neo4rs::{BoltType, ConfigBuilder, Graph, Query, Row, Txn};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::{
    AnalystRequest, AnswerSize, GraphStore, IndexEntry, InsertOutcome, PendingIndex, PoolStatus, QueryRows,
    RelatedContext, RelatedWalk, StateKey, StoreCounts,
};
use crate::domain::{
    AgentState, Context, ContextFilter, ContextVersion, ReadScope, Relation, Session, Timestamp, Visibility,
};
use crate::error::{StoreError, StoreResult};
use crate::store::breaker::CircuitBreaker;

mod cypher {
    pub const SCHEMA: &str = include_str!("../../../cypher/schema.cypher");
    pub const SESSION_CREATE: &str = include_str!("../../../cypher/session_create.cypher");
    pub const SESSION_GET: &str = include_str!("../../../cypher/session_get.cypher");
    pub const SESSION_LIST: &str = include_str!("../../../cypher/session_list.cypher");
    pub const SESSION_LOCK: &str = include_str!("../../../cypher/session_lock.cypher");
    pub const CONTEXT_DUPLICATE: &str = include_str!("../../../cypher/context_duplicate.cypher");
    pub const CONTEXT_INSERT: &str = include_str!("../../../cypher/context_insert.cypher");
    pub const CONTEXT_LOCK: &str = include_str!("../../../cypher/context_lock.cypher");
    pub const CONTEXT_UPDATE: &str = include_str!("../../../cypher/context_update.cypher");
    pub const CONTEXT_RESTORE: &str = include_str!("../../../cypher/context_restore.cypher");
    pub const CONTEXT_SET_DELETED: &str = include_str!("../../../cypher/context_set_deleted.cypher");
    pub const CONTEXT_PURGE: &str = include_str!("../../../cypher/context_purge.cypher");
    pub const CONTEXT_REMOVE: &str = include_str!("../../../cypher/context_remove.cypher");
    pub const CONTEXT_GET_MANY: &str = include_str!("../../../cypher/context_get_many.cypher");
    pub const CONTEXT_LIST: &str = include_str!("../../../cypher/context_list.cypher");
    pub const CONTEXT_LIST_IN_SESSION: &str = include_str!("../../../cypher/context_list_in_session.cypher");
    pub const CONTEXT_VERSIONS: &str = include_str!("../../../cypher/context_versions.cypher");
    pub const RELATION_LINK: &str = include_str!("../../../cypher/relation_link.cypher");
    pub const RELATION_STEP: &str = include_str!("../../../cypher/relation_step.cypher");
    pub const RELATION_NEIGHBOURS: &str = include_str!("../../../cypher/relation_neighbours.cypher");
    pub const STATE_LOCK: &str = include_str!("../../../cypher/state_lock.cypher");
    pub const STATE_WRITE: &str = include_str!("../../../cypher/state_write.cypher");
    pub const STATE_GET: &str = include_str!("../../../cypher/state_get.cypher");
    pub const STATE_LIST: &str = include_str!("../../../cypher/state_list.cypher");
    pub const STATE_DELETE: &str = include_str!("../../../cypher/state_delete.cypher");
    pub const JOURNAL_ADD: &str = include_str!("../../../cypher/journal_add.cypher");
    pub const JOURNAL_PENDING: &str = include_str!("../../../cypher/journal_pending.cypher");
    pub const JOURNAL_CLEAR: &str = include_str!("../../../cypher/journal_clear.cypher");
    pub const INDEX_ENTRIES: &str = include_str!("../../../cypher/index_entries.cypher");
    pub const INDEX_SCAN: &str = include_str!("../../../cypher/index_scan.cypher");
    pub const CONTEXT_EXPIRED: &str = include_str!("../../../cypher/context_expired.cypher");
    pub const STATE_PURGE_EXPIRED: &str = include_str!("../../../cypher/state_purge_expired.cypher");
    pub const RELATIONS_FROM: &str = include_str!("../../../cypher/relations_from.cypher");
    pub const STATE_SCAN: &str = include_str!("../../../cypher/state_scan.cypher");
    pub const VERSIONS_IMPORT: &str = include_str!("../../../cypher/versions_import.cypher");
    pub const COUNTS: &str = include_str!("../../../cypher/counts.cypher");
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

pub struct Neo4jGraphStore {
    graph: Graph,
    /// MODEL plus the labels and relationship types found at start-up.
    schema: String,
    /// One permit per pooled connection: bounds waiting and tells how many are in use.
    permits: Arc<Semaphore>,
    options: Neo4jOptions,
    breaker: CircuitBreaker,
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

/// Runs the body in one write transaction (`$txn: &mut Txn`): admitted by the circuit breaker, bounded by
/// the pool, committed on success and rolled back otherwise, repeated on transient errors.
macro_rules! transaction {
    ($store:expr, |$txn:ident| $body:expr) => {{
        let store = $store;
        store
            .guarded(async {
                let _permit = store.permit().await?;
                let mut attempt = 0u32;
                loop {
                    let result = async {
                        let mut owned = store.begin().await?;
                        let $txn = &mut owned;
                        let outcome: TxResult<_> = async { $body }.await;
                        store.finish(owned, outcome).await
                    }
                    .await;
                    if let Some(done) = store.settle(result, &mut attempt).await {
                        break done;
                    }
                }
            })
            .await
    }};
}

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

fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("JSON values serialize")
}

fn bolt(value: Value) -> TxResult<BoltType> {
    Ok(BoltType::try_from(value)?)
}

/// A context as returned by the `c {...} AS context` projections.
#[derive(Deserialize)]
struct ContextRow {
    id: String,
    session_id: String,
    agent_id: String,
    #[serde(rename = "type")]
    context_type: String,
    content: String,
    tags: Vec<String>,
    metadata: String,
    visibility: String,
    created_at: i64,
    updated_at: i64,
    version: i64,
    expires_at: Option<i64>,
    content_hash: String,
}

fn parse_uuid(text: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(text).map_err(|e| StoreError::Backend(format!("stored id '{text}' is not a UUID: {e}")))
}

fn parse_visibility(text: &str) -> StoreResult<Visibility> {
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

fn context_of(row: &Row) -> TxResult<Context> {
    Ok(row.get::<ContextRow>("context")?.into_context()?)
}

#[derive(Deserialize)]
struct SessionRow {
    id: String,
    purpose: String,
    metadata: String,
    created_by: String,
    created_at: i64,
}

#[derive(Deserialize)]
struct StateRow {
    agent_id: String,
    session_id: String,
    key: String,
    value: String,
    version: i64,
    updated_at: i64,
    expires_at: Option<i64>,
}

#[derive(Deserialize)]
struct VersionRow {
    version: i64,
    #[serde(rename = "type")]
    context_type: String,
    content: String,
    tags: Vec<String>,
    metadata: String,
    visibility: String,
    updated_at: i64,
}

fn state_of(row: &Row) -> TxResult<AgentState> {
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
fn filterable(value: &Value) -> bool {
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
fn context_props(context: &Context, embedding: &[f32]) -> TxResult<BoltType> {
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

fn scope_params(query: Query, scope: &ReadScope, now: Timestamp) -> Query {
    query
        .param("admin", scope.admin)
        .param("agent_id", scope.agent_id.clone())
        .param("sessions", scope.sessions.clone())
        .param("now", now.millis())
}

fn filter_query(filter: &ContextFilter, after: Option<Uuid>, limit: usize) -> TxResult<Query> {
    let text = if filter.session_id.is_some() { cypher::CONTEXT_LIST_IN_SESSION } else { cypher::CONTEXT_LIST };
    let metadata = Value::Object(filter.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    let query = Query::new(text.to_string())
        .param("session_id", filter.session_id.clone())
        .param("after", after.map(|a| a.to_string()))
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

fn query(text: &str) -> Query {
    Query::new(text.to_string())
}

/// Runs a statement and collects its rows.
async fn rows(txn: &mut Txn, query: Query) -> TxResult<Vec<Row>> {
    let mut stream = txn.execute(query).await?;
    let mut rows = Vec::new();
    while let Some(row) = stream.next(txn.handle()).await? {
        rows.push(row);
    }
    Ok(rows)
}

/// Journal sequences order entries by creation time; the low bits keep concurrent writers apart (a clash
/// fails the unique constraint and the transaction is retried).
fn journal_seq() -> i64 {
    (Timestamp::now().millis() << 20) | i64::from(fastrand::u32(..1 << 20))
}

async fn journal(txn: &mut Txn, id: Uuid, op: &str) -> TxResult<i64> {
    let seq = journal_seq();
    txn.run(
        query(cypher::JOURNAL_ADD)
            .param("seq", seq)
            .param("item_id", id.to_string())
            .param("op", op)
            .param("created_at", Timestamp::now().millis()),
    )
    .await?;
    Ok(seq)
}

/// Takes the context's write lock; returns its live state and embedding.
async fn lock_entry(txn: &mut Txn, id: Uuid) -> TxResult<IndexEntry> {
    let found = rows(txn, query(cypher::CONTEXT_LOCK).param("id", id.to_string())).await?;
    match found.first() {
        Some(row) => index_entry_of(row),
        None => Err(StoreError::NotFound.into()),
    }
}

async fn live_contexts(txn: &mut Txn, ids: &[Uuid]) -> TxResult<Vec<Context>> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    rows(txn, query(cypher::CONTEXT_GET_MANY).param("ids", ids)).await?.iter().map(context_of).collect()
}

async fn duplicate_of(
    txn: &mut Txn,
    session_id: &str,
    content_hash: &str,
    scope: &ReadScope,
) -> TxResult<Option<Context>> {
    let statement =
        query(cypher::CONTEXT_DUPLICATE).param("session_id", session_id).param("content_hash", content_hash);
    let found = rows(txn, scope_params(statement, scope, Timestamp::now())).await?;
    found.first().map(context_of).transpose()
}

fn state_params(statement: Query, key: &StateKey) -> Query {
    statement
        .param("agent_id", key.agent_id.clone())
        .param("session_id", key.session_id.clone().unwrap_or_default())
        .param("key", key.key.clone())
}

/// The live version of a locked state entry (0 when absent or expired).
async fn lock_state(txn: &mut Txn, key: &StateKey, now: Timestamp) -> TxResult<i64> {
    let found = rows(txn, state_params(query(cypher::STATE_LOCK), key)).await?;
    let row = found.first().ok_or_else(|| StoreError::Backend("state lock returned no row".into()))?;
    let version: i64 = row.get("version")?;
    let expires_at: Option<i64> = row.get("expires_at")?;
    Ok(if expires_at.is_some_and(|at| at <= now.millis()) { 0 } else { version })
}

fn index_entry_of(row: &Row) -> TxResult<IndexEntry> {
    let embedding: Vec<f64> = row.get("embedding")?;
    Ok(IndexEntry { context: context_of(row)?, embedding: embedding.into_iter().map(|v| v as f32).collect() })
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
            breaker: CircuitBreaker::new("neo4j", options.breaker_threshold, options.breaker_cooldown),
        };
        store.apply_schema().await?;
        store.schema = store.describe().await?;
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
        // Schema statements each run in a transaction of their own.
        for statement in statements {
            transaction!(self, |txn| {
                txn.run(query(statement)).await?;
                Ok(())
            })?;
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
impl GraphStore for Neo4jGraphStore {
    fn backend(&self) -> &'static str {
        "neo4j"
    }

    async fn ping(&self) -> StoreResult<()> {
        transaction!(self, |txn| {
            txn.run(query("RETURN 1")).await?;
            Ok(())
        })
    }

    fn query_language(&self) -> &'static str {
        "cypher"
    }

    fn query_schema(&self) -> String {
        self.schema.clone()
    }

    /// Neo4j Community has no per-user graph scoping, so analyst Cypher sees the whole graph: the service
    /// runs it for admins only.
    fn scoped_analyst_queries(&self) -> bool {
        false
    }

    async fn analyst_query(&self, request: AnalystRequest<'_>) -> StoreResult<QueryRows> {
        let AnalystRequest { query: text, params, limit, timeout, ticket: _ticket, .. } = request;
        super::cypher_guard::check(text).map_err(StoreError::InvalidQuery)?;
        let mut statement = query(text).extra("tx_timeout", timeout.as_millis() as i64);
        for (name, value) in params {
            let value = BoltType::try_from(value.clone())
                .map_err(|e| StoreError::InvalidQuery(format!("parameter {name}: {e}")))?;
            statement = statement.param(name, value);
        }
        let rejected = |err: neo4rs::Error| match &err {
            neo4rs::Error::Neo4j(e) if e.code().starts_with("Neo.ClientError") => {
                StoreError::InvalidQuery(format!("{}: {}", e.code(), e.message()))
            }
            _ => store_error(err),
        };
        let run = async {
            let _permit = self.permit().await?;
            // A READ transaction: the server refuses write clauses.
            let mut stream = self.graph.execute_read(statement).await.map_err(rejected)?;
            let mut found = QueryRows::default();
            let mut answer = AnswerSize::default();
            while let Some(row) = stream.next().await.map_err(rejected)? {
                if found.rows.len() == limit {
                    found.truncated = true;
                    break;
                }
                if found.columns.is_empty() {
                    found.columns = row.keys().into_iter().map(|k| k.value.clone()).collect();
                    found.columns.sort();
                }
                let values = found.columns.iter().map(|c| row.get::<Value>(c)).collect::<Result<Vec<_>, _>>();
                let values = values.map_err(|e| StoreError::Backend(format!("unreadable row: {e}")))?;
                answer.add(&values)?;
                found.rows.push(values);
            }
            stream.finish().await.map_err(rejected)?;
            Ok(found)
        };
        // The server stops the transaction at `tx_timeout`; past that and a grace second the query counts as
        // answered-too-slow (not as the backend being unreachable), a little later as unreachable.
        let deadline = timeout + Duration::from_secs(1);
        let answered = async {
            tokio::time::timeout(deadline, run).await.unwrap_or_else(|_| {
                Err(StoreError::InvalidQuery(format!("the query ran longer than {} ms", timeout.as_millis())))
            })
        };
        self.breaker.call(deadline + self.options.call_timeout, answered).await
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        let max = self.options.max_connections.max(1);
        Some(PoolStatus { max, in_use: max - self.permits.available_permits() })
    }

    async fn create_session(&self, session: &Session) -> StoreResult<()> {
        transaction!(self, |txn| {
            let statement = query(cypher::SESSION_CREATE)
                .param("id", session.id.clone())
                .param("purpose", session.purpose.clone())
                .param("metadata", json_text(&session.metadata))
                .param("created_by", session.created_by.clone())
                .param("created_at", session.created_at.millis());
            let id = session.id.clone();
            if rows(txn, statement).await?.is_empty() {
                return Err(StoreError::Conflict(format!("session '{id}' already exists")).into());
            }
            Ok(())
        })
        .map_err(|e| match e {
            StoreError::Conflict(_) => StoreError::Conflict(format!("session '{}' already exists", session.id)),
            other => other,
        })
    }

    async fn get_session(&self, id: &str) -> StoreResult<Option<Session>> {
        transaction!(self, |txn| {
            let statement = query(cypher::SESSION_GET).param("id", id);
            let found = rows(txn, statement).await?;
            found.first().map(session_of).transpose()
        })
    }

    async fn list_sessions(
        &self,
        after: Option<&str>,
        limit: usize,
        only: Option<&[String]>,
    ) -> StoreResult<Vec<Session>> {
        transaction!(self, |txn| {
            let statement = query(cypher::SESSION_LIST)
                .param("after", after.unwrap_or(""))
                .param("only", only.map(<[String]>::to_vec))
                .param("limit", limit as i64);
            rows(txn, statement).await?.iter().map(session_of).collect()
        })
    }

    async fn find_duplicate(
        &self,
        session_id: &str,
        content_hash: &str,
        scope: &ReadScope,
    ) -> StoreResult<Option<Context>> {
        transaction!(self, |txn| duplicate_of(txn, session_id, content_hash, scope).await)
    }

    async fn insert_context(
        &self,
        context: &Context,
        embedding: &[f32],
        dedup_scope: &ReadScope,
    ) -> StoreResult<InsertOutcome> {
        transaction!(self, |txn| {
            let locked = rows(txn, query(cypher::SESSION_LOCK).param("id", context.session_id.clone())).await?;
            if locked.is_empty() {
                return Err(StoreError::NotFound.into());
            }
            if let Some(existing) = duplicate_of(txn, &context.session_id, &context.content_hash, dedup_scope).await? {
                return Ok(InsertOutcome::Duplicate(Box::new(existing)));
            }
            let statement = query(cypher::CONTEXT_INSERT)
                .param("session_id", context.session_id.clone())
                .param("agent_id", context.agent_id.clone())
                .param("tags", context.tags.clone())
                .param("props", context_props(context, embedding)?);
            txn.run(statement).await?;
            let journal_seq = journal(txn, context.id, "upsert").await?;
            Ok(InsertOutcome::Inserted { journal_seq })
        })
    }

    async fn update_context(&self, updated: &Context, embedding: &[f32]) -> StoreResult<(i64, Context, Vec<f32>)> {
        transaction!(self, |txn| {
            let IndexEntry { context: previous, embedding: previous_embedding } = lock_entry(txn, updated.id).await?;
            if previous.version != updated.version - 1 {
                return Err(
                    StoreError::VersionConflict { expected: updated.version - 1, current: previous.version }.into()
                );
            }
            let statement = query(cypher::CONTEXT_UPDATE)
                .param("id", updated.id.to_string())
                .param("tags", updated.tags.clone())
                .param("props", context_props(updated, embedding)?);
            txn.run(statement).await?;
            let seq = journal(txn, updated.id, "upsert").await?;
            Ok((seq, previous, previous_embedding))
        })
    }

    async fn delete_context(&self, id: Uuid, expected_version: Option<i64>) -> StoreResult<(i64, Context)> {
        transaction!(self, |txn| {
            let current = lock_entry(txn, id).await?.context;
            if let Some(expected) = expected_version
                && expected != current.version
            {
                return Err(StoreError::VersionConflict { expected, current: current.version }.into());
            }
            txn.run(query(cypher::CONTEXT_SET_DELETED).param("id", id.to_string()).param("deleted", true)).await?;
            let seq = journal(txn, id, "delete").await?;
            Ok((seq, current))
        })
    }

    async fn purge_context(&self, id: Uuid) -> StoreResult<()> {
        transaction!(self, |txn| {
            txn.run(query(cypher::CONTEXT_PURGE).param("id", id.to_string())).await?;
            Ok(())
        })
    }

    async fn rollback_insert(&self, id: Uuid) -> StoreResult<()> {
        transaction!(self, |txn| {
            txn.run(query(cypher::CONTEXT_REMOVE).param("id", id.to_string())).await?;
            Ok(())
        })
    }

    async fn rollback_update(&self, previous: &Context, previous_embedding: &[f32]) -> StoreResult<()> {
        transaction!(self, |txn| {
            let statement = query(cypher::CONTEXT_RESTORE)
                .param("id", previous.id.to_string())
                .param("version", previous.version)
                .param("tags", previous.tags.clone())
                .param("props", context_props(previous, previous_embedding)?);
            txn.run(statement).await?;
            Ok(())
        })
    }

    async fn rollback_delete(&self, id: Uuid) -> StoreResult<()> {
        transaction!(self, |txn| {
            txn.run(query(cypher::CONTEXT_SET_DELETED).param("id", id.to_string()).param("deleted", false)).await?;
            Ok(())
        })
    }

    async fn get_context(&self, id: Uuid) -> StoreResult<Option<Context>> {
        Ok(self.get_contexts(&[id]).await?.into_iter().next())
    }

    async fn get_contexts(&self, ids: &[Uuid]) -> StoreResult<Vec<Context>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, |txn| live_contexts(txn, ids).await)
    }

    async fn list_contexts(
        &self,
        filter: &ContextFilter,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<Context>> {
        transaction!(self, |txn| {
            let statement = filter_query(filter, after, limit)?;
            rows(txn, statement).await?.iter().map(context_of).collect()
        })
    }

    async fn context_versions(&self, id: Uuid) -> StoreResult<Vec<ContextVersion>> {
        transaction!(self, |txn| {
            let found = rows(txn, query(cypher::CONTEXT_VERSIONS).param("id", id.to_string())).await?;
            found
                .iter()
                .map(|row| {
                    let v: VersionRow = row.get("version")?;
                    Ok(ContextVersion {
                        id,
                        version: v.version,
                        context_type: v.context_type,
                        content: v.content,
                        tags: v.tags,
                        metadata: serde_json::from_str(&v.metadata).map_err(StoreError::from)?,
                        visibility: parse_visibility(&v.visibility)?,
                        updated_at: Timestamp(v.updated_at),
                    })
                })
                .collect()
        })
    }

    async fn link(&self, relation: &Relation) -> StoreResult<()> {
        transaction!(self, |txn| {
            let statement = query(cypher::RELATION_LINK)
                .param("from_id", relation.from_id.to_string())
                .param("to_id", relation.to_id.to_string())
                .param("relation", relation.relation.clone())
                .param("metadata", json_text(&relation.metadata))
                .param("created_at", relation.created_at.millis())
                .param("created_by", relation.created_by.clone());
            let found = rows(txn, statement).await?;
            let linked: i64 = match found.first() {
                Some(row) => row.get("linked")?,
                None => 0,
            };
            if linked == 0 {
                return Err(StoreError::NotFound.into());
            }
            Ok(())
        })
    }

    async fn related(
        &self,
        id: Uuid,
        depth: u32,
        relation: Option<&str>,
        both_directions: bool,
        max_nodes: usize,
        scope: &ReadScope,
    ) -> StoreResult<Vec<RelatedContext>> {
        transaction!(self, |txn| {
            let mut walk = RelatedWalk::new(id, max_nodes, scope.clone());
            for level in 1..=depth {
                if walk.frontier().is_empty() {
                    break;
                }
                let statement = query(cypher::RELATION_STEP)
                    .param("ids", walk.frontier().iter().map(Uuid::to_string).collect::<Vec<_>>())
                    .param("both", both_directions)
                    .param("relation", relation.map(str::to_string));
                let edges = rows(txn, statement)
                    .await?
                    .iter()
                    .map(|row| {
                        let from = parse_uuid(&row.get::<String>("from_id")?)?;
                        Ok((from, parse_uuid(&row.get::<String>("to_id")?)?, row.get::<String>("relation")?))
                    })
                    .collect::<TxResult<Vec<_>>>()?;
                walk.absorb(level, edges);
                walk.settle(live_contexts(txn, &walk.level_ids()).await?);
            }
            Ok(walk.finish())
        })
    }

    async fn neighbours(
        &self,
        ids: &[Uuid],
        per_node: usize,
        scope: &ReadScope,
    ) -> StoreResult<Vec<(Uuid, RelatedContext)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = Timestamp::now();
        transaction!(self, |txn| {
            let statement = query(cypher::RELATION_NEIGHBOURS)
                .param("ids", ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
                .param("per_node", per_node as i64);
            let statement = scope_params(statement, scope, now);
            rows(txn, statement)
                .await?
                .iter()
                .map(|row| {
                    let start = parse_uuid(&row.get::<String>("start")?)?;
                    let context = context_of(row)?;
                    let relation: String = row.get("relation")?;
                    Ok((start, RelatedContext { context, depth: 1, relation, via: start }))
                })
                .collect()
        })
    }

    async fn set_state(&self, state: &AgentState, expected_version: Option<i64>) -> StoreResult<AgentState> {
        let key =
            StateKey { agent_id: state.agent_id.clone(), session_id: state.session_id.clone(), key: state.key.clone() };
        transaction!(self, |txn| {
            let key = key.clone();
            let current = lock_state(txn, &key, state.updated_at).await?;
            if let Some(expected) = expected_version
                && expected != current
            {
                return Err(StoreError::VersionConflict { expected, current }.into());
            }
            let stored = AgentState { version: current + 1, ..state.clone() };
            let statement = state_params(query(cypher::STATE_WRITE), &key)
                .param("value", json_text(&stored.value))
                .param("version", stored.version)
                .param("updated_at", stored.updated_at.millis())
                .param("expires_at", stored.expires_at.map(Timestamp::millis));
            txn.run(statement).await?;
            Ok(stored)
        })
    }

    async fn get_state(&self, key: &StateKey) -> StoreResult<Option<AgentState>> {
        transaction!(self, |txn| {
            let statement = state_params(query(cypher::STATE_GET), key).param("now", Timestamp::now().millis());
            rows(txn, statement).await?.first().map(state_of).transpose()
        })
    }

    async fn list_state(
        &self,
        agent_id: &str,
        session_id: Option<&str>,
        prefix: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AgentState>> {
        transaction!(self, |txn| {
            let statement = query(cypher::STATE_LIST)
                .param("agent_id", agent_id)
                .param("session_id", session_id.unwrap_or(""))
                .param("prefix", prefix)
                .param("after", after_key.unwrap_or(""))
                .param("now", Timestamp::now().millis())
                .param("limit", limit as i64);
            rows(txn, statement).await?.iter().map(state_of).collect()
        })
    }

    async fn delete_state(&self, key: &StateKey, expected_version: Option<i64>) -> StoreResult<()> {
        transaction!(self, |txn| {
            let current = lock_state(txn, key, Timestamp::now()).await?;
            if current == 0 {
                return Err(StoreError::NotFound.into());
            }
            if let Some(expected) = expected_version
                && expected != current
            {
                return Err(StoreError::VersionConflict { expected, current }.into());
            }
            txn.run(state_params(query(cypher::STATE_DELETE), key)).await?;
            Ok(())
        })
    }

    async fn relations_from(&self, ids: &[Uuid]) -> StoreResult<Vec<Relation>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, |txn| {
            let statement =
                query(cypher::RELATIONS_FROM).param("ids", ids.iter().map(Uuid::to_string).collect::<Vec<_>>());
            rows(txn, statement)
                .await?
                .iter()
                .map(|row| {
                    Ok(Relation {
                        from_id: parse_uuid(&row.get::<String>("from_id")?)?,
                        to_id: parse_uuid(&row.get::<String>("to_id")?)?,
                        relation: row.get("relation")?,
                        metadata: serde_json::from_str(&row.get::<String>("metadata")?).map_err(StoreError::from)?,
                        created_at: Timestamp(row.get("created_at")?),
                        created_by: row.get("created_by")?,
                    })
                })
                .collect()
        })
    }

    async fn scan_states(&self, after: Option<&StateKey>, limit: usize) -> StoreResult<Vec<AgentState>> {
        let after =
            after.cloned().unwrap_or(StateKey { agent_id: String::new(), session_id: None, key: String::new() });
        transaction!(self, |txn| {
            let statement = state_params(query(cypher::STATE_SCAN), &after).param("limit", limit as i64);
            rows(txn, statement).await?.iter().map(state_of).collect()
        })
    }

    async fn import_versions(&self, id: Uuid, versions: &[ContextVersion]) -> StoreResult<()> {
        let listed: Vec<Value> = versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "version": v.version, "type": v.context_type, "content": v.content, "tags": v.tags,
                    "metadata": json_text(&v.metadata), "visibility": v.visibility.as_str(),
                    "updated_at": v.updated_at.millis(), "content_hash": crate::domain::content_hash(&v.content),
                })
            })
            .collect();
        transaction!(self, |txn| {
            let statement = query(cypher::VERSIONS_IMPORT)
                .param("id", id.to_string())
                .param("versions", bolt(Value::Array(listed.clone()))?);
            txn.run(statement).await?;
            Ok(())
        })
    }

    async fn expired_contexts(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<Uuid>> {
        transaction!(self, |txn| {
            let statement = query(cypher::CONTEXT_EXPIRED).param("now", now.millis()).param("limit", limit as i64);
            rows(txn, statement).await?.iter().map(|row| Ok(parse_uuid(&row.get::<String>("id")?)?)).collect()
        })
    }

    async fn purge_expired_state(&self, now: Timestamp, limit: usize) -> StoreResult<u64> {
        transaction!(self, |txn| {
            let statement = query(cypher::STATE_PURGE_EXPIRED).param("now", now.millis()).param("limit", limit as i64);
            let found = rows(txn, statement).await?;
            Ok(found.first().map(|row| row.get::<i64>("purged")).transpose()?.unwrap_or(0) as u64)
        })
    }

    async fn pending_index(&self, limit: usize) -> StoreResult<Vec<PendingIndex>> {
        transaction!(self, |txn| {
            rows(txn, query(cypher::JOURNAL_PENDING).param("limit", limit as i64))
                .await?
                .iter()
                .map(|row| Ok(PendingIndex { seq: row.get("seq")?, id: parse_uuid(&row.get::<String>("item_id")?)? }))
                .collect()
        })
    }

    async fn clear_pending(&self, seqs: &[i64]) -> StoreResult<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        transaction!(self, |txn| {
            for chunk in seqs.chunks(1000) {
                txn.run(query(cypher::JOURNAL_CLEAR).param("seqs", chunk.to_vec())).await?;
            }
            Ok(())
        })
    }

    async fn index_entries(&self, ids: &[Uuid]) -> StoreResult<Vec<IndexEntry>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        transaction!(self, |txn| {
            let statement =
                query(cypher::INDEX_ENTRIES).param("ids", ids.iter().map(Uuid::to_string).collect::<Vec<_>>());
            rows(txn, statement).await?.iter().map(index_entry_of).collect()
        })
    }

    async fn scan_index_entries(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Vec<IndexEntry>> {
        transaction!(self, |txn| {
            let statement = query(cypher::INDEX_SCAN)
                .param("after", after.map(|a| a.to_string()).unwrap_or_default())
                .param("limit", limit as i64);
            rows(txn, statement).await?.iter().map(index_entry_of).collect()
        })
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        transaction!(self, |txn| {
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

fn session_of(row: &Row) -> TxResult<Session> {
    let session: SessionRow = row.get("session")?;
    Ok(Session {
        id: session.id,
        purpose: session.purpose,
        metadata: serde_json::from_str(&session.metadata).map_err(StoreError::from)?,
        created_by: session.created_by,
        created_at: Timestamp(session.created_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
