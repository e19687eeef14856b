//! `ContextService`: every operation of the store, independent of MCP, HTTP and JSON-RPC.
//!
//! Architecture invariant: a write is acknowledged only after both the graph and the vector store hold it.
//! The graph write comes first and journals the item; if the vector write fails the graph write is undone.
//! Journal entries are cleared by `maintenance` only after the vector store has flushed, so a crash at any
//! point is repaired by `repair_pending` at start-up.
//!
//! Agent state is the exception by design: a state write is acknowledged once the graph holds it (with its
//! embedding and journal entry), because agents coordinate through it and it should not fail while only the
//! vector side is down. Its point is written at once; if that fails, the journal entry stays pending and the
//! running repair (`repair_stale`) writes it within two `repair_interval`s of the vector store answering.

pub mod analytics;
pub mod changes;
mod contexts;
mod maintenance;
pub mod recalls;
pub mod requests;
mod search;
mod sessions;
mod state;
pub mod transfer;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;
use uuid::Uuid;

use crate::embed::Embedder;
use crate::error::{ServiceError, ServiceResult};
use crate::metrics::Metrics;
use crate::store::{GraphStore, VectorStore};

pub use analytics::{QueryGraphRequest, QueryGraphResponse};
pub use maintenance::{Expired, MaintenanceOptions};
pub use requests::*;

/// Tunables of the service layer.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub search_cache_entries: u64,
    pub search_cache_ttl: Duration,
    pub default_vector_weight: f64,
    pub default_lexical_weight: f64,
    /// How many prefiltered contexts the fuzzy-only fallback scores.
    pub fuzzy_fallback_scan: usize,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            search_cache_entries: 10_000,
            search_cache_ttl: Duration::from_secs(30),
            default_vector_weight: crate::config::DEFAULT_VECTOR_WEIGHT,
            default_lexical_weight: crate::config::DEFAULT_LEXICAL_WEIGHT,
            fuzzy_fallback_scan: 2000,
        }
    }
}

/// The readiness check's own bound on each backend check: longer than any backend's own timeouts.
const READY_LIMIT: Duration = Duration::from_secs(15);

/// Number of per-item locks that order concurrent writes to the same context.
const ITEM_LOCKS: usize = 256;

pub struct ContextService {
    graph: Arc<dyn GraphStore>,
    vectors: Arc<dyn VectorStore>,
    /// Agent state points (see `store::vector::state_points`), in a collection of their own.
    state_vectors: Arc<dyn VectorStore>,
    embedder: Arc<dyn Embedder>,
    metrics: Arc<Metrics>,
    options: ServiceOptions,
    search_cache: Cache<String, Arc<SearchResponse>>,
    /// Bumped by every write; part of the search cache key, so writes invalidate cached results.
    generation: AtomicU64,
    /// Journal entries whose vector write is applied but not yet flushed.
    applied: Mutex<Vec<i64>>,
    /// Unfinished journal entries seen by the last `repair_stale`.
    seen_pending: Mutex<std::collections::HashSet<i64>>,
    /// Writes to one context are serialized so the vector side sees them in graph order.
    item_locks: Vec<tokio::sync::Mutex<()>>,
    /// Free analyst query slots (see `analytics::MAX_CONCURRENT_QUERIES`).
    analyst_slots: Arc<tokio::sync::Semaphore>,
    /// Where the fuzzy rerank runs: one lane per core, off the async workers.
    rerank_lanes: crate::store::lanes::BlockingLanes,
    /// Writes running on their own (see `write_slot`).
    write_slots: Arc<tokio::sync::Semaphore>,
    /// Every change to a context, for subscribers.
    changes: changes::ChangeFeed,
    /// Recalls counted since the last flush (see `recalls`).
    recalls: recalls::RecallLog,
}

/// Writes that may run at once on their own, their callers gone or not.
const MAX_RUNNING_WRITES: usize = 512;

impl ContextService {
    pub fn new(
        graph: Arc<dyn GraphStore>,
        vectors: Arc<dyn VectorStore>,
        state_vectors: Arc<dyn VectorStore>,
        embedder: Arc<dyn Embedder>,
        metrics: Arc<Metrics>,
        options: ServiceOptions,
    ) -> crate::error::StoreResult<Self> {
        let search_cache = Cache::builder()
            .max_capacity(options.search_cache_entries)
            .weigher(|key: &String, answer: &Arc<SearchResponse>| search::cache_weight(key, answer))
            .time_to_live(options.search_cache_ttl)
            .build();
        Ok(Self {
            graph,
            vectors,
            state_vectors,
            embedder,
            metrics,
            options,
            search_cache,
            generation: AtomicU64::new(0),
            applied: Mutex::new(Vec::new()),
            seen_pending: Mutex::new(Default::default()),
            item_locks: (0..ITEM_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect(),
            analyst_slots: Arc::new(tokio::sync::Semaphore::new(analytics::MAX_CONCURRENT_QUERIES)),
            rerank_lanes: crate::store::lanes::BlockingLanes::per_core("rerank")?,
            write_slots: Arc::new(tokio::sync::Semaphore::new(MAX_RUNNING_WRITES)),
            changes: changes::ChangeFeed::new(changes::FEED_CAPACITY),
            recalls: Default::default(),
        })
    }

    /// The change feed (see `changes`).
    pub fn changes(&self) -> &changes::ChangeFeed {
        &self.changes
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts the background work that makes searches cheaper, for a process about to serve them.
    pub fn prepare_search(&self) {
        self.vectors.prepare_search();
        self.state_vectors.prepare_search();
    }

    /// A slot for a write that runs to completion even when its caller goes away: held by the write's task,
    /// so writes whose callers left still count against the bound. None free is `unavailable` at once.
    pub fn write_slot(&self) -> ServiceResult<tokio::sync::OwnedSemaphorePermit> {
        self.write_slots.clone().try_acquire_owned().map_err(|_| {
            ServiceError::Unavailable(format!("{MAX_RUNNING_WRITES} writes are already running; retry shortly"))
        })
    }

    pub fn graph(&self) -> &Arc<dyn GraphStore> {
        &self.graph
    }

    pub fn vectors(&self) -> &Arc<dyn VectorStore> {
        &self.vectors
    }

    pub fn state_vectors(&self) -> &Arc<dyn VectorStore> {
        &self.state_vectors
    }

    fn item_lock(&self, id: Uuid) -> &tokio::sync::Mutex<()> {
        let index = (id.as_u128() % ITEM_LOCKS as u128) as usize;
        &self.item_locks[index]
    }

    /// Records a write whose vector side is applied: invalidates cached searches and queues the journal
    /// entry for clearing after the next flush.
    fn written(&self, journal_seq: i64) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).push(journal_seq);
    }

    /// Whether each backend answers: the readiness check, naming the backend that does not. The three
    /// checks run at once; each backend bounds its own call (connect and request timeouts, circuit breaker),
    /// and `READY_LIMIT`, longer than any of those, only guards against a check that never returns.
    pub async fn ready(&self) -> Readiness {
        fn health(role: &'static str, backend: &'static str, outcome: Option<ServiceResult<()>>) -> BackendHealth {
            let error = match outcome {
                Some(Ok(())) => None,
                Some(Err(err)) => Some(err.to_string()),
                None => Some(format!("no answer within {} s", READY_LIMIT.as_secs())),
            };
            BackendHealth { role, backend, ok: error.is_none(), error }
        }
        async fn bounded(check: impl std::future::Future<Output = ServiceResult<()>>) -> Option<ServiceResult<()>> {
            tokio::time::timeout(READY_LIMIT, check).await.ok()
        }
        let (graph, vectors, embedder) = tokio::join!(
            bounded(async { Ok(self.graph.ping().await?) }),
            bounded(async { Ok(self.vectors.count().await.map(|_| ())?) }),
            bounded(async { Ok(self.embedder.probe().await?) }),
        );
        let backends = vec![
            health("graph", self.graph.backend(), graph),
            health("vectors", self.vectors.backend(), vectors),
            health("embedder", "fastembed", embedder),
        ];
        Readiness { ready: backends.iter().all(|b| b.ok), backends }
    }

    /// Process-wide cache counters for analysts (query) and admins; store-wide item counts only for admins
    /// (they describe data the caller may not see).
    pub async fn metrics_summary(&self, principal: &crate::auth::Principal) -> ServiceResult<MetricsSummary> {
        if principal.require(crate::auth::Permission::Read).is_err() {
            principal.require(crate::auth::Permission::Query)?;
        }
        let metrics = &self.metrics;
        let items = if principal.permissions.admin {
            let counts = self.graph.counts().await?;
            Some(ItemCounts {
                sessions: counts.sessions,
                contexts: counts.contexts,
                agent_states: counts.agent_states,
                pending_index: counts.pending_index,
                vectors: self.vectors.count().await?,
            })
        } else {
            None
        };
        let caches = principal.require(crate::auth::Permission::Query).is_ok().then(|| CacheCounters {
            embed_cache_hits: metrics.embed_cache_hits.get(),
            embed_cache_misses: metrics.embed_cache_misses.get(),
            embed_cache_hit_ratio: metrics.embed_cache_ratio(),
            search_cache_hits: metrics.search_cache_hits.get(),
            search_cache_misses: metrics.search_cache_misses.get(),
        });
        Ok(MetricsSummary { items, caches })
    }

    /// The Prometheus text of `/metrics` (permission `query`): the store-wide item counts, refreshed now, for
    /// admins only.
    pub async fn prometheus_text(&self, principal: &crate::auth::Principal) -> ServiceResult<String> {
        principal.require(crate::auth::Permission::Query)?;
        let admin = principal.permissions.admin;
        if admin {
            let _ = self.refresh_item_metrics().await;
        }
        Ok(self.metrics.render(admin))
    }

    /// Refreshes the item-count and pool gauges.
    pub async fn refresh_item_metrics(&self) -> ServiceResult<()> {
        if let Some(pool) = self.graph.pool_status() {
            let gauge = &self.metrics.pool_connections;
            gauge.with_label_values(&[self.graph.backend(), "max"]).set(pool.max as i64);
            gauge.with_label_values(&[self.graph.backend(), "in_use"]).set(pool.in_use as i64);
        }
        let counts = self.graph.counts().await;
        self.metrics.backend_up.with_label_values(&[self.graph.backend()]).set(i64::from(counts.is_ok()));
        let counts = counts?;
        let items = &self.metrics.items;
        items.with_label_values(&["sessions"]).set(counts.sessions as i64);
        items.with_label_values(&["contexts"]).set(counts.contexts as i64);
        items.with_label_values(&["agent_states"]).set(counts.agent_states as i64);
        items.with_label_values(&["pending_index"]).set(counts.pending_index as i64);
        items.with_label_values(&["vectors"]).set(self.vectors.count().await? as i64);
        items.with_label_values(&["indexed_vectors"]).set(self.vectors.indexed().await? as i64);
        items.with_label_values(&["state_vectors"]).set(self.state_vectors.count().await? as i64);
        Ok(())
    }
}

/// The readiness report: one entry per backend.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub backends: Vec<BackendHealth>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendHealth {
    /// graph, vectors or embedder.
    pub role: &'static str,
    /// sqlite, neo4j, qdrant-edge, qdrant, fastembed.
    pub backend: &'static str,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Parses an opaque cursor that carries a context id.
fn parse_id_cursor(cursor: Option<&str>) -> ServiceResult<Option<Uuid>> {
    cursor
        .map(|c| Uuid::parse_str(c).map_err(|_| ServiceError::invalid("cursor is not one this service issued")))
        .transpose()
}
