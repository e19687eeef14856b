//! The embedded vector store: Qdrant's engine in-process (qdrant-edge), one shard in the data directory.
//!
//! qdrant-edge has a synchronous `&self` API, so every call runs off the async workers: reads on the store's
//! query lanes (`BlockingLanes`), writes in `spawn_blocking`. It runs nothing in the background: `optimize`
//! (HNSW build) and `flush` are called by the service's maintenance task.
//! `EdgeShard::flush` panics if an update holds the WAL at that moment, so updates take `gate` shared and
//! flush takes it exclusively.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use qdrant_edge::{
    AnyVariants, Condition, CountRequest, CreateIndex, Distance, EdgeConfigBuilder, EdgeOptimizersConfig, EdgeShard,
    EdgeSparseVectorParams, EdgeVectorParams, FieldCondition, FieldIndexOperations, Filter, HnswIndexConfig, JsonPath,
    Match, MatchAny, MatchValue, Modifier, NamedQuery, PayloadFieldSchema, PointId, PointInsertOperations,
    PointOperations, PointStruct, QuantizationConfig, QuantizationSearchParams, QueryEnum, Range, Record,
    ScrollRequest, SearchParams, SearchRequest, SparseVector, UpdateOperation, ValueVariants, Vector, VectorInternal,
    VectorStructInternal, Vectors, WithPayloadInterface, WithVector,
};
use uuid::Uuid;

use super::collection::{QuantizationSearchSpec, QuantizationSpec, ScalarKind};
use super::filter::metadata_condition;
use super::lexical::Lexical;
use super::payload::{from_payload, to_payload};
use super::term_counts::{TermCounts, Walk};
use super::{CollectionSpec, LexicalHit, LexicalHits, VectorHit, VectorPoint, VectorStore};
use crate::domain::{Context, ContextFilter, Timestamp, Visibility};
use crate::error::{StoreError, StoreResult};
use crate::store::lanes::BlockingLanes;

pub struct EdgeVectorStore {
    shard: Arc<EdgeShard>,
    gate: Arc<RwLock<()>>,
    hnsw_ef: usize,
    /// How searches use the quantized vectors, when the collection has them.
    quantization: Option<QuantizationSearchSpec>,
    /// The lexical stage, when the shard has its sparse vector.
    lexical: Option<Arc<Lexical>>,
    /// How many points hold each lexical term, to leave common terms' posting lists unwalked.
    terms: Arc<TermCounts>,
    /// A query term in more points than this is common (`lexical.common_term_points`; 0: none is).
    common_term_points: u32,
    /// Filters matching fewer points than this leave every term walked (`PLAIN_SEARCH_POINTS`).
    plain_search_points: usize,
    /// Searches and scrolls are CPU-bound: one lane (thread) per core, the rest wait in its queue.
    query_lanes: BlockingLanes,
    /// An exclusive lock on `<dir>/.lock` for as long as the store is open (the kernel drops it when the
    /// process dies). qdrant-edge has no lock of its own, and two processes on one shard (a server and an
    /// `export`, `doctor` or `reindex`) would each write segments and WAL the other does not know of.
    _process_lock: Arc<std::fs::File>,
}

/// Takes the shard directory's process lock, or says which directory is in use.
fn lock_dir(dir: &Path) -> StoreResult<std::fs::File> {
    std::fs::create_dir_all(dir).map_err(|e| edge_error(format!("create {}: {e}", dir.display())))?;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| edge_error(format!("open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "the embedded vector store {} is open in another process (a running server?); it opens in one \
             process at a time",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(edge_error(format!("lock {}: {e}", path.display()))),
    }
}

/// The collection's quantization in qdrant-edge's terms (its scalar variant is not exported by name, so it
/// is read from the same notation Qdrant's REST API uses).
fn quantization(spec: &QuantizationSpec) -> StoreResult<QuantizationConfig> {
    let ScalarKind::Int8 = spec.scalar.kind;
    let notation = serde_json::json!({"scalar": {
        "type": "int8",
        "quantile": spec.scalar.quantile,
        "always_ram": spec.scalar.always_ram,
    }});
    serde_json::from_value(notation).map_err(|e| edge_error(format!("quantization: {e}")))
}

/// Search parameters: an exact search reads the original vectors only, so it stays the ground truth.
fn search_params(hnsw_ef: usize, exact: bool, quantization: Option<QuantizationSearchSpec>) -> SearchParams {
    let quantization = quantization.map(|q| QuantizationSearchParams {
        ignore: exact,
        rescore: Some(q.rescore),
        oversampling: Some(q.oversampling),
    });
    SearchParams { hnsw_ef: Some(hnsw_ef), exact, quantization, ..SearchParams::default() }
}

/// Below this many points a filtered sparse search scores each point instead of walking posting lists
/// (qdrant-edge's default sparse `full_scan_threshold`).
const PLAIN_SEARCH_POINTS: usize = 5_000;

/// How many more candidates than asked for the rare terms of a planned lexical query find.
const RARE_OVERSAMPLING: usize = 2;

fn edge_error(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("qdrant-edge: {err}"))
}

fn point_id(id: Uuid) -> PointId {
    PointId::Uuid(id)
}

fn distance(name: &str) -> StoreResult<Distance> {
    match name {
        "Cosine" => Ok(Distance::Cosine),
        "Dot" => Ok(Distance::Dot),
        "Euclid" => Ok(Distance::Euclid),
        "Manhattan" => Ok(Distance::Manhattan),
        other => Err(StoreError::Backend(format!("unknown distance '{other}' in collection spec"))),
    }
}

/// `expires_at` is empty (its payload field type is not exported, so it is read from the REST notation).
static NO_EXPIRY: std::sync::LazyLock<Condition> = std::sync::LazyLock::new(|| {
    serde_json::from_value(serde_json::json!({"is_empty": {"key": "expires_at"}})).expect("an is_empty condition")
});

/// The filter in qdrant-edge's types: the same conditions as `to_qdrant_json` (tested equal to its
/// deserialization), built directly, as every search converts its filter and the JSON route cost ~3.5% of a
/// search's CPU at 1M. Metadata conditions, rare, still go through the JSON.
pub(crate) fn qdrant_filter(filter: &ContextFilter) -> StoreResult<Filter> {
    // Field names of the payload (constants), always valid paths.
    let key = |path: &str| -> JsonPath { path.parse().expect("a payload field name") };
    let field = |path: &str, condition: Match| Condition::Field(FieldCondition::new_match(key(path), condition));
    let text =
        |path: &str, text: &str| field(path, Match::Value(MatchValue { value: ValueVariants::String(text.into()) }));
    let any = |path: &str, values: &mut dyn Iterator<Item = String>| {
        field(path, Match::Any(MatchAny { any: AnyVariants::Strings(values.collect()) }))
    };
    let range = |path: &str, range: Range<_>| Condition::Field(FieldCondition::new_range(key(path), range));
    let all = |conditions: Vec<Condition>| Condition::Filter(Filter { must: Some(conditions), ..Filter::default() });
    let some = |conditions: Vec<Condition>| Condition::Filter(Filter { should: Some(conditions), ..Filter::default() });

    let mut must = Vec::new();
    if !filter.scope.admin {
        must.push(some(vec![
            field("public", Match::Value(MatchValue { value: ValueVariants::Bool(true) })),
            text("visibility", Visibility::Public.as_str()),
            all(vec![text("visibility", Visibility::Private.as_str()), text("agent_id", &filter.scope.agent_id)]),
        ]));
    }
    if let Some(sessions) = &filter.scope.sessions {
        must.push(any("session_id", &mut sessions.iter().cloned()));
    }
    must.push(some(vec![
        NO_EXPIRY.clone(),
        range("expires_at", Range { gt: Some((filter.now.millis() as f64).into()), ..Range::default() }),
    ]));
    if let Some(session_id) = &filter.session_id {
        must.push(text("session_id", session_id));
    }
    for (path, values) in [("type", &filter.types), ("tags", &filter.tags_any)] {
        if !values.is_empty() {
            must.push(any(path, &mut values.iter().cloned()));
        }
    }
    must.extend(filter.tags_all.iter().map(|tag| text("tags", tag)));
    if !filter.agent_ids.is_empty() {
        must.push(any("agent_id", &mut filter.agent_ids.iter().cloned()));
    }
    if filter.created_after.is_some() || filter.created_before.is_some() {
        let millis = |at: Option<Timestamp>| at.map(|at| (at.millis() as f64).into());
        let created =
            Range { gte: millis(filter.created_after), lt: millis(filter.created_before), ..Range::default() };
        must.push(range("created_at", created));
    }
    if !filter.visibility.is_empty() {
        must.push(any("visibility", &mut filter.visibility.iter().map(|v| v.as_str().to_string())));
    }
    for (name, value) in &filter.metadata {
        let condition = serde_json::from_value(metadata_condition(name, value));
        must.push(condition.map_err(|e| edge_error(format!("filter: {e}")))?);
    }
    Ok(Filter { must: Some(must), ..Filter::default() })
}

impl EdgeVectorStore {
    /// Opens the shard in `dir`, creating it (and its payload indexes) on first use.
    pub async fn open(dir: &Path, spec: &CollectionSpec) -> StoreResult<Self> {
        let dir: PathBuf = dir.to_path_buf();
        let spec = spec.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let lock = lock_dir(&dir)?;
            open_shard(&dir, &spec).map(|(shard, lexical)| (shard, lexical, spec, lock))
        })
        .await??;
        let (shard, lexical, spec, lock) = opened;
        let lexical = match (&spec.lexical, lexical) {
            (Some(lexical), true) => Some(Arc::new(Lexical::new(lexical)?)),
            _ => None,
        };
        let common_term_points = spec.lexical.as_ref().map_or(0, |l| l.common_term_points);
        Ok(Self {
            shard: Arc::new(shard),
            gate: Arc::new(RwLock::new(())),
            hnsw_ef: spec.search.hnsw_ef,
            quantization: spec.search_quantization(),
            lexical,
            terms: Arc::default(),
            common_term_points,
            plain_search_points: PLAIN_SEARCH_POINTS,
            query_lanes: BlockingLanes::per_core("vector-query")?,
            _process_lock: Arc::new(lock),
        })
    }

    /// Takes the process lock of the store in `dir` (refused while another process has it open).
    pub fn lock(dir: &Path) -> StoreResult<std::fs::File> {
        lock_dir(dir)
    }

    /// Vectors covered by an HNSW index (the rest are searched exactly).
    /// qdrant-edge counts every vector of an indexed segment, the sparse ones too: with the lexical stage
    /// each point has two (a text of stopwords only has none, so this can read slightly low).
    pub fn indexed_vectors(&self) -> usize {
        dense_indexed(self.shard.info().indexed_vectors_count, self.lexical.is_some())
    }

    async fn blocking<T, F>(&self, exclusive: bool, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&EdgeShard) -> StoreResult<T> + Send + 'static,
    {
        let shard = self.shard.clone();
        let gate = self.gate.clone();
        tokio::task::spawn_blocking(move || {
            if exclusive {
                let _guard = gate.write().unwrap_or_else(|e| e.into_inner());
                work(&shard)
            } else {
                let _guard = gate.read().unwrap_or_else(|e| e.into_inner());
                work(&shard)
            }
        })
        .await?
    }

    /// A read-only query on one of the query lanes.
    async fn query<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&EdgeShard) -> StoreResult<T> + Send + 'static,
    {
        let shard = self.shard.clone();
        let gate = self.gate.clone();
        self.query_lanes
            .run(move || {
                let _guard = gate.read().unwrap_or_else(|e| e.into_inner());
                work(&shard)
            })
            .await
    }
}

/// Whether the shard stored in `dir` was made with the sparse vector `name` (a shard made before the lexical
/// stage existed was not, and cannot gain it: `reindex --recreate` rebuilds it).
fn stored_with_sparse(dir: &Path, name: &str) -> StoreResult<bool> {
    let path = dir.join("edge_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| edge_error(format!("read {}: {e}", path.display())))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| edge_error(format!("{}: {e}", path.display())))?;
    Ok(config.get("sparse_vectors").and_then(|v| v.get(name)).is_some())
}

/// Opens the shard in `dir`, which `lock_dir` created and locked; says whether it has the lexical stage's
/// sparse vector.
fn open_shard(dir: &Path, spec: &CollectionSpec) -> StoreResult<(EdgeShard, bool)> {
    let hnsw = HnswIndexConfig {
        m: spec.hnsw_config.m,
        ef_construct: spec.hnsw_config.ef_construct,
        full_scan_threshold: spec.hnsw_config.full_scan_threshold_kb,
        payload_m: spec.hnsw_config.payload_m,
        ..HnswIndexConfig::default()
    };
    let optimizers = EdgeOptimizersConfig {
        indexing_threshold: Some(spec.optimizers_config.indexing_threshold_kb),
        max_segment_size: spec.optimizers_config.max_segment_size_kb,
        ..EdgeOptimizersConfig::default()
    };
    let exists = dir.join("edge_config.json").exists();
    let lexical = match &spec.lexical {
        Some(lexical) if exists && !stored_with_sparse(dir, &lexical.name)? => {
            tracing::warn!(
                dir = %dir.display(),
                "this vector store was made without the lexical stage; searches run without it until \
                 `context-store reindex --recreate` rebuilds it from the graph"
            );
            None
        }
        other => other.as_ref(),
    };
    let mut builder = EdgeConfigBuilder::new().vector(
        "",
        EdgeVectorParams::builder(spec.vectors.size, distance(&spec.vectors.distance)?)
            .on_disk(spec.vectors.on_disk)
            .build(),
    );
    if let Some(quantized) = &spec.quantization_config {
        builder = builder.quantization_config(quantization(quantized)?);
    }
    if let Some(lexical) = lexical {
        builder = builder
            .sparse_vector(lexical.name.clone(), EdgeSparseVectorParams::builder().modifier(Modifier::Idf).build());
    }
    let config = builder.hnsw_config(hnsw).optimizers(optimizers).on_disk_payload(true).build();
    if exists {
        truncate_wal_prefix(&dir.join("wal"))?;
    }
    let shard = if exists {
        EdgeShard::load(dir, Some(config)).map_err(edge_error)?
    } else {
        EdgeShard::new(dir, config).map_err(edge_error)?
    };
    let indexed = shard.info().payload_schema;
    for (field, schema) in &spec.payload_indexes {
        let field_name: JsonPath =
            field.as_str().try_into().map_err(|_| edge_error(format!("bad payload index field '{field}'")))?;
        if indexed.contains_key(&field_name) {
            continue;
        }
        let field_schema: PayloadFieldSchema =
            serde_json::from_value(schema.clone()).map_err(|e| edge_error(format!("index '{field}': {e}")))?;
        shard
            .update(UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                field_name,
                field_schema: Some(field_schema),
            })))
            .map_err(edge_error)?;
    }
    Ok((shard, lexical.is_some()))
}

/// Deletes every closed WAL segment but the newest, as the WAL's own prefix truncation would.
///
/// qdrant-edge 0.7 writes every update to its WAL but neither replays it when a shard loads (only flushed
/// segments count) nor ever truncates it (there is no acknowledgement), so the WAL grows by ~5 KB per
/// write forever and each 32 MiB segment stays mapped in memory (at 100k contexts: 7 segments, ~220 MB of
/// RSS). Nothing is lost by removing them: writes not yet flushed to segments are replayed from the graph's
/// index journal at start-up. Keeping the newest closed and the open segments keeps the WAL's entry numbers
/// (the points' versions) continuous.
fn truncate_wal_prefix(wal: &Path) -> StoreResult<()> {
    let Ok(entries) = std::fs::read_dir(wal) else { return Ok(()) };
    let mut closed: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let start = entry.file_name().to_str()?.strip_prefix("closed-")?.parse::<u64>().ok()?;
            Some((start, entry.path()))
        })
        .collect();
    closed.sort();
    closed.pop();
    for (_, path) in closed {
        std::fs::remove_file(&path).map_err(|e| edge_error(format!("remove {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The dense vectors covered by the HNSW index, from the shard's count of all indexed vectors (see
/// `indexed_vectors`).
fn dense_indexed(all_indexed: usize, lexical: bool) -> usize {
    if lexical { all_indexed / 2 } else { all_indexed }
}

/// The unnamed dense vector of a point's vectors.
fn dense_of(vectors: VectorStructInternal) -> Option<Vec<f32>> {
    match vectors {
        VectorStructInternal::Single(dense) => Some(dense),
        VectorStructInternal::Named(mut named) => match named.remove("") {
            Some(VectorInternal::Dense(dense)) => Some(dense),
            _ => None,
        },
        VectorStructInternal::MultiDense(_) => None,
    }
}

fn to_context(payload: Option<qdrant_edge::Payload>) -> StoreResult<Context> {
    let payload = payload.ok_or_else(|| edge_error("point without payload"))?;
    from_payload(payload.0)
}

impl EdgeVectorStore {
    /// The lexical stage. Hits in `known` come back as scores only; the others are read (payload, and the
    /// dense vector with `with_dense`) once the segments' hits are merged.
    ///
    /// Once the terms are counted, common terms' posting lists are not walked (`TermCounts`): the rare
    /// terms find twice `limit` candidates (with their term weights), the store scores them by the whole
    /// query with the engine's BM25 and its own document frequencies, and keeps the best `limit`. A query of
    /// common terms only scores the `known` candidates.
    async fn lexical(
        &self,
        query: &str,
        filter: &ContextFilter,
        limit: usize,
        with_dense: bool,
        known: HashSet<Uuid>,
    ) -> StoreResult<Option<LexicalHits>> {
        let Some(lexical) = &self.lexical else { return Ok(None) };
        let (indices, values) = lexical.query(query);
        if indices.is_empty() {
            return Ok(Some(LexicalHits::default()));
        }
        self.count_terms_once();
        let planned = match self.terms.plan(&indices, self.common_term_points) {
            Walk::All => None,
            // Without candidates from elsewhere there is nothing to score but what a walk finds.
            Walk::None if known.is_empty() => None,
            Walk::None => Some(Candidates::Known),
            Walk::Rare(rare) => {
                let (indices, values) =
                    indices.iter().zip(&values).filter(|(term, _)| rare.contains(term)).map(|(t, v)| (*t, *v)).unzip();
                Some(Candidates::Rare(sparse_query(indices, values)?))
            }
        };
        // The query's terms, each weighed by its IDF, to score the planned candidates.
        let planned = planned.zip(self.terms.idf(&indices)).map(|(candidates, idf)| {
            let terms = indices
                .iter()
                .zip(values.iter().zip(idf))
                .map(|(t, (v, idf))| (*t, v * idf))
                .collect::<Vec<(u32, f32)>>();
            (candidates, terms)
        });
        let sparse = sparse_query(indices, values)?;
        let (scope, filter, using) = (filter.clone(), qdrant_filter(filter)?, lexical.name.clone());
        let with_vector = match with_dense {
            true => WithVector::Selector(vec![String::new()]),
            false => WithVector::Bool(false),
        };
        let plain_search_points = self.plain_search_points;
        self.query(move |shard| {
            let search = |query: SparseVector, filter: Filter, limit: usize, with_terms: bool| {
                let request = SearchRequest {
                    query: QueryEnum::Nearest(NamedQuery {
                        query: VectorInternal::Sparse(query),
                        using: Some(using.clone()),
                    }),
                    filter: Some(filter),
                    params: None,
                    limit,
                    offset: 0,
                    // Payloads are read once the segments' hits are merged (see `search`).
                    with_payload: Some(WithPayloadInterface::Bool(false)),
                    with_vector: Some(match with_terms {
                        true => WithVector::Selector(vec![using.clone()]),
                        false => WithVector::Bool(false),
                    }),
                    score_threshold: None,
                };
                shard.search(request).map_err(edge_error)
            };
            // Over fewer than `PLAIN_SEARCH_POINTS` points the engine scores each one instead of walking
            // posting lists, so a narrow filter (one session) gains nothing from leaving terms out.
            let narrow = || -> StoreResult<bool> {
                let estimate = shard.count(CountRequest { filter: Some(filter.clone()), exact: false });
                Ok(estimate.map_err(edge_error)? < plain_search_points)
            };
            let planned = match planned {
                Some(_) if narrow()? => None,
                planned => planned,
            };
            let scored: Vec<(PointId, f32)> = match planned {
                None => search(sparse, filter, limit, false)?.into_iter().map(|p| (p.id, p.score)).collect(),
                Some((candidates, terms)) => {
                    // The rare terms find candidates (more than asked for, as the common terms may still
                    // reorder them), the whole query scores them, and the best `limit` are kept, as a full
                    // walk keeps its best `limit`. Without rare terms, the whole query scores the known
                    // candidates.
                    let found: Vec<(PointId, Option<VectorStructInternal>)> = match candidates {
                        Candidates::Rare(rare) => search(rare, filter, RARE_OVERSAMPLING * limit, true)?
                            .into_iter()
                            .map(|point| (point.id, point.vector))
                            .collect(),
                        // The vector stage found these under the same filter and read their contexts; a
                        // point changed since then is scored by its new terms beside the context read then
                        // (the rerank checks the filter on that context).
                        Candidates::Known => {
                            let ids: Vec<PointId> = known.iter().copied().map(point_id).collect();
                            let selector = Some(WithVector::Selector(vec![using.clone()]));
                            let records = shard.retrieve(&ids, Some(WithPayloadInterface::Bool(false)), selector);
                            records.map_err(edge_error)?.into_iter().map(|record| (record.id, record.vector)).collect()
                        }
                    };
                    let mut scored: Vec<(PointId, f32)> = found
                        .into_iter()
                        .filter_map(|(id, vectors)| {
                            let weights = vectors.and_then(|v| sparse_of(v, &using))?;
                            Some((id, bm25(&terms, &weights)?))
                        })
                        .collect();
                    scored.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
                    scored.truncate(limit);
                    scored
                }
            };
            let mut hits = LexicalHits::default();
            let mut unread = Vec::new();
            for (id, score) in scored {
                match id {
                    PointId::Uuid(id) if known.contains(&id) => hits.known.push((id, score)),
                    id => unread.push((id, score)),
                }
            }
            for (score, context, vector) in read_hits(shard, unread, with_vector, &scope)? {
                hits.hits.push(LexicalHit { score, context, dense: vector.and_then(dense_of) });
            }
            Ok(Some(hits))
        })
        .await
    }

    /// Starts counting the lexical terms of every point, once per open store, in the background: searches
    /// walk every term until it is done. A failed count is logged and tried again by a later search.
    fn count_terms_once(&self) {
        let Some(lexical) = &self.lexical else { return };
        if self.common_term_points == 0 || !self.terms.claim_count() {
            return;
        }
        let (shard, gate, terms, name) =
            (self.shard.clone(), self.gate.clone(), self.terms.clone(), lexical.name.clone());
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match count_terms(&shard, &gate, &terms, &name) {
                Ok(points) => {
                    tracing::info!(points, ms = started.elapsed().as_millis() as u64, "lexical terms counted")
                }
                Err(err) => {
                    terms.hold().failed();
                    tracing::warn!(error = %err, "counting the lexical terms failed; every term is walked");
                }
            }
        });
    }

    /// The term counts and the sparse vector's name, when the store plans lexical queries with them.
    fn term_counting(&self) -> Option<(Arc<TermCounts>, String)> {
        let lexical = self.lexical.as_ref().filter(|_| self.common_term_points > 0)?;
        Some((self.terms.clone(), lexical.name.clone()))
    }

    /// Runs a write of the points `ids` (`write`) and keeps the term counts: the terms they held before
    /// are taken away and `written` (their new terms, empty for a delete) added, for the points the counts
    /// track (see `TermCounts`).
    fn counted_write(
        shard: &EdgeShard,
        counting: Option<(&TermCounts, &str)>,
        ids: &[Uuid],
        written: &[Vec<u32>],
        write: impl FnOnce() -> StoreResult<()>,
    ) -> StoreResult<()> {
        let Some((terms, name)) = counting else { return write() };
        let hold = terms.hold();
        let tracked: Vec<usize> = (0..ids.len()).filter(|&i| hold.tracks(ids[i])).collect();
        let points: Vec<PointId> = tracked.iter().map(|&i| point_id(ids[i])).collect();
        let before = match points.is_empty() {
            true => Vec::new(),
            false => stored_terms(shard, &points, name)?,
        };
        write()?;
        hold.replace(
            before.iter().map(Vec::as_slice),
            tracked.iter().filter_map(|&i| written.get(i)).map(Vec::as_slice),
        );
        Ok(())
    }
}

/// The lexical terms the stored points `ids` hold (none for a point not stored or without terms).
fn stored_terms(shard: &EdgeShard, ids: &[PointId], name: &str) -> StoreResult<Vec<Vec<u32>>> {
    let selector = WithVector::Selector(vec![name.to_string()]);
    let records = shard.retrieve(ids, Some(WithPayloadInterface::Bool(false)), Some(selector)).map_err(edge_error)?;
    Ok(records
        .into_iter()
        .filter_map(|record| record.vector.and_then(|v| sparse_of(v, name)).map(|v| v.indices))
        .collect())
}

/// Counts the lexical terms of every point in the shard into `terms`, a page at a time in id order (each
/// page holds the update gate shared, as a write does, and the counts); returns how many points were read.
fn count_terms(shard: &EdgeShard, gate: &RwLock<()>, terms: &TermCounts, name: &str) -> StoreResult<usize> {
    const PAGE: usize = 4096;
    let (mut offset, mut points) = (None, 0);
    loop {
        // The gate first, then the counts: the order a write takes them in.
        let _guard = gate.read().unwrap_or_else(|e| e.into_inner());
        let mut hold = terms.hold();
        let (records, next) = shard
            .scroll(ScrollRequest {
                offset,
                limit: Some(PAGE),
                filter: None,
                with_payload: Some(WithPayloadInterface::Bool(false)),
                with_vector: WithVector::Selector(vec![name.to_string()]),
                order_by: None,
            })
            .map_err(edge_error)?;
        points += records.len();
        let page: Vec<Vec<u32>> = records
            .into_iter()
            .filter_map(|record| record.vector.and_then(|v| sparse_of(v, name)).map(|v| v.indices))
            .collect();
        hold.add(page.iter().map(Vec::as_slice));
        hold.scanned(next.map(|next| match next {
            PointId::Uuid(id) => id,
            PointId::NumId(_) => Uuid::nil(),
        }));
        match next {
            Some(next) => offset = Some(next),
            None => return Ok(points),
        }
    }
}

/// Reads the contexts (and `with_vector`) of scored ids, in their order. A point deleted, or changed past
/// `scope`, between the search and the read is left out.
fn read_hits(
    shard: &EdgeShard,
    scored: Vec<(PointId, f32)>,
    with_vector: WithVector,
    scope: &ContextFilter,
) -> StoreResult<Vec<(f32, Context, Option<VectorStructInternal>)>> {
    let ids: Vec<PointId> = scored.iter().map(|(id, _)| *id).collect();
    let records = shard.retrieve(&ids, Some(WithPayloadInterface::Bool(true)), Some(with_vector));
    let mut records: HashMap<PointId, Record> =
        records.map_err(edge_error)?.into_iter().map(|record| (record.id, record)).collect();
    let mut hits = Vec::with_capacity(scored.len());
    for (id, score) in scored {
        if let Some(record) = records.remove(&id) {
            let context = to_context(record.payload)?;
            if scope.matches(&context) {
                hits.push((score, context, record.vector));
            }
        }
    }
    Ok(hits)
}

/// A point's sparse vector `name`: its terms and their weights.
fn sparse_of(vectors: VectorStructInternal, name: &str) -> Option<SparseVector> {
    match vectors {
        VectorStructInternal::Named(mut named) => match named.remove(name) {
            Some(VectorInternal::Sparse(sparse)) => Some(sparse),
            _ => None,
        },
        _ => None,
    }
}

/// Where the candidates of a planned lexical query come from.
enum Candidates {
    /// A walk of the rare terms' posting lists.
    Rare(SparseVector),
    /// The candidates the vector stage found (every term is common).
    Known,
}

/// A point's BM25 score under query `terms` (each with its query weight times its IDF): the sum over the
/// terms it holds of that weight times its own weight for the term, as the engine's `idf` modifier scores.
/// None when it holds none, as the engine leaves such a point out.
fn bm25(terms: &[(u32, f32)], point: &SparseVector) -> Option<f32> {
    let mut score = None;
    for (term, weight) in terms {
        if let Some(at) = point.indices.iter().position(|t| t == term) {
            *score.get_or_insert(0.0) += weight * point.values[at];
        }
    }
    score
}

fn sparse_query(indices: Vec<u32>, values: Vec<f32>) -> StoreResult<SparseVector> {
    SparseVector::new(indices, values).map_err(|e| edge_error(format!("query terms: {e}")))
}

#[async_trait]
impl VectorStore for EdgeVectorStore {
    fn backend(&self) -> &'static str {
        "qdrant-edge"
    }

    async fn upsert(&self, points: Vec<VectorPoint>) -> StoreResult<()> {
        let (mut ids, mut written) = (Vec::with_capacity(points.len()), Vec::with_capacity(points.len()));
        let points = points
            .into_iter()
            .map(|p| {
                let vectors = match &self.lexical {
                    Some(lexical) => {
                        let (indices, values) = lexical.document(&p.context.content);
                        let mut named = vec![(String::new(), Vector::new_dense(p.vector))];
                        ids.push(p.context.id);
                        written.push(indices.clone());
                        if !indices.is_empty() {
                            named
                                .push((lexical.name.clone(), Vector::new_sparse(indices, values).map_err(edge_error)?));
                        }
                        Vectors::new_named(named)
                    }
                    None => Vectors::from(p.vector),
                };
                Ok(PointStruct::new(point_id(p.context.id), vectors, to_payload(&p.context)).into())
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let counting = self.term_counting();
        self.blocking(false, move |shard| {
            let counting = counting.as_ref().map(|(terms, name)| (terms.as_ref(), name.as_str()));
            Self::counted_write(shard, counting, &ids, &written, || {
                shard
                    .update(UpdateOperation::PointOperation(PointOperations::UpsertPoints(
                        PointInsertOperations::PointsList(points),
                    )))
                    .map_err(edge_error)
            })
        })
        .await
    }

    async fn delete(&self, ids: &[Uuid]) -> StoreResult<()> {
        let counting = self.term_counting();
        let ids = ids.to_vec();
        self.blocking(false, move |shard| {
            let counting = counting.as_ref().map(|(terms, name)| (terms.as_ref(), name.as_str()));
            let points: Vec<PointId> = ids.iter().copied().map(point_id).collect();
            Self::counted_write(shard, counting, &ids, &[], || {
                shard
                    .update(UpdateOperation::PointOperation(PointOperations::DeletePoints { ids: points }))
                    .map_err(edge_error)
            })
        })
        .await
    }

    async fn search(
        &self,
        vector: Vec<f32>,
        filter: &ContextFilter,
        limit: usize,
        exact: bool,
    ) -> StoreResult<Vec<VectorHit>> {
        let (scope, filter) = (filter.clone(), qdrant_filter(filter)?);
        let params = search_params(self.hnsw_ef.max(limit), exact, self.quantization);
        self.query(move |shard| {
            let request = SearchRequest {
                query: QueryEnum::Nearest(NamedQuery { query: VectorInternal::Dense(vector), using: None }),
                filter: Some(filter),
                params: Some(params),
                limit,
                offset: 0,
                // Each segment would read the payloads of its own best `limit` before they are merged.
                with_payload: Some(WithPayloadInterface::Bool(false)),
                with_vector: Some(WithVector::Bool(false)),
                score_threshold: None,
            };
            let scored = shard.search(request).map_err(edge_error)?.into_iter().map(|p| (p.id, p.score)).collect();
            let hits = read_hits(shard, scored, WithVector::Bool(false), &scope)?;
            Ok(hits.into_iter().map(|(score, context, _)| VectorHit { score, context }).collect())
        })
        .await
    }

    async fn lexical_search(
        &self,
        query: &str,
        filter: &ContextFilter,
        limit: usize,
        with_dense: bool,
    ) -> StoreResult<Option<Vec<LexicalHit>>> {
        let hits = self.lexical(query, filter, limit, with_dense, HashSet::new()).await?;
        Ok(hits.map(|hits| hits.hits))
    }

    async fn lexical_search_beside(
        &self,
        query: &str,
        filter: &ContextFilter,
        limit: usize,
        with_dense: bool,
        known: &HashSet<Uuid>,
    ) -> StoreResult<Option<LexicalHits>> {
        self.lexical(query, filter, limit, with_dense, known.clone()).await
    }

    async fn scroll(&self, filter: &ContextFilter, limit: usize) -> StoreResult<Vec<Context>> {
        let filter = qdrant_filter(filter)?;
        self.query(move |shard| {
            let (records, _next) = shard
                .scroll(ScrollRequest {
                    offset: None,
                    limit: Some(limit),
                    filter: Some(filter),
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                })
                .map_err(edge_error)?;
            records.into_iter().map(|r| to_context(r.payload)).collect()
        })
        .await
    }

    async fn existing_ids(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        let ids: Vec<PointId> = ids.iter().copied().map(point_id).collect();
        self.blocking(false, move |shard| {
            let records = shard
                .retrieve(&ids, Some(WithPayloadInterface::Bool(false)), Some(WithVector::Bool(false)))
                .map_err(edge_error)?;
            Ok(records
                .into_iter()
                .filter_map(|r| match r.id {
                    PointId::Uuid(id) => Some(id),
                    PointId::NumId(_) => None,
                })
                .collect())
        })
        .await
    }

    async fn count(&self) -> StoreResult<u64> {
        self.blocking(false, |shard| {
            shard.count(CountRequest { filter: None, exact: true }).map(|n| n as u64).map_err(edge_error)
        })
        .await
    }

    async fn indexed(&self) -> StoreResult<u64> {
        let lexical = self.lexical.is_some();
        self.blocking(false, move |shard| Ok(dense_indexed(shard.info().indexed_vectors_count, lexical) as u64)).await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.blocking(true, |shard| {
            shard.flush();
            Ok(())
        })
        .await
    }

    async fn optimize(&self) -> StoreResult<bool> {
        self.blocking(false, |shard| shard.optimize().map_err(edge_error)).await
    }

    fn prepare_search(&self) {
        self.count_terms_once();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ContextFilterArgs, ReadScope, Timestamp, Visibility};

    fn point(rng: &mut fastrand::Rng) -> VectorPoint {
        let vector: Vec<f32> = (0..384).map(|_| rng.f32() - 0.5).collect();
        let context = Context {
            id: Uuid::now_v7(),
            session_id: "s".into(),
            agent_id: "a".into(),
            context_type: "note".into(),
            content: format!("note {}", rng.u32(..)),
            tags: vec![],
            metadata: Default::default(),
            visibility: Visibility::Public,
            created_at: Timestamp(1),
            updated_at: Timestamp(1),
            version: 1,
            expires_at: None,
            content_hash: rng.u64(..).to_string(),
        };
        VectorPoint { context, vector }
    }

    /// Whether each HNSW-indexed segment's dense vector is quantized, as the segments on disk record it
    /// (the appendable segment new points go to is never quantized).
    fn segment_quantization(dir: &Path) -> Vec<bool> {
        let segments = std::fs::read_dir(dir.join("segments")).unwrap();
        let mut found = Vec::new();
        for segment in segments.map(|e| e.unwrap().path()).filter(|p| p.join("segment.json").exists()) {
            let text = std::fs::read_to_string(segment.join("segment.json")).unwrap();
            let config: serde_json::Value = serde_json::from_str(&text).unwrap();
            let dense = &config["config"]["vector_data"][""];
            if dense["index"]["type"] == "hnsw" {
                found.push(!dense["quantization_config"].is_null());
            }
        }
        found
    }

    /// A store made before quantization gains it: reopened with the quantized definition, its optimizer
    /// rebuilds the segments, and the quantized, rescored search finds what exact search finds.
    #[tokio::test]
    async fn a_store_gains_int8_quantization_on_reopen_and_searches_agree_with_exact_search() {
        let dir = tempfile::tempdir().unwrap();
        let quantized = CollectionSpec::builtin();
        assert!(quantized.quantization_config.is_some() && quantized.vectors.on_disk);
        let plain = CollectionSpec {
            quantization_config: None,
            vectors: super::super::collection::VectorSpec { on_disk: false, ..quantized.vectors.clone() },
            ..quantized.clone()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let points: Vec<VectorPoint> = (0..3000).map(|_| point(&mut rng)).collect();
        let queries: Vec<Vec<f32>> = points.iter().step_by(100).map(|p| p.vector.clone()).collect();
        {
            let store = EdgeVectorStore::open(dir.path(), &plain).await.unwrap();
            for chunk in points.chunks(500) {
                store.upsert(chunk.to_vec()).await.unwrap();
            }
            store.optimize().await.unwrap();
            store.flush().await.unwrap();
        }
        let segments = segment_quantization(dir.path());
        assert!(!segments.is_empty() && segments.iter().all(|q| !q), "indexed without quantization: {segments:?}");

        let store = EdgeVectorStore::open(dir.path(), &quantized).await.unwrap();
        store.optimize().await.unwrap();
        store.flush().await.unwrap();
        let segments = segment_quantization(dir.path());
        assert!(!segments.is_empty() && segments.iter().all(|q| *q), "every indexed segment quantized: {segments:?}");
        assert_eq!(store.count().await.unwrap(), 3000);
        let scope = ReadScope { agent_id: "a".into(), admin: true, sessions: None };
        let filter = ContextFilter::parse(ContextFilterArgs::default(), scope, Timestamp(2)).unwrap();
        let (mut found, mut expected) = (0, 0);
        for query in queries {
            let exact = store.search(query.clone(), &filter, 10, true).await.unwrap();
            let approximate = store.search(query, &filter, 10, false).await.unwrap();
            expected += exact.len();
            found += exact.iter().filter(|e| approximate.iter().any(|a| a.context.id == e.context.id)).count();
        }
        assert_eq!(expected, 300);
        assert!(found as f64 / expected as f64 >= 0.95, "recall@10 {found}/{expected}");
    }

    /// Once the terms are counted, a common term's posting list is not walked: the rare terms find the
    /// candidates and the whole query scores them as a full walk would; a query of common terms only scores
    /// the known candidates. A narrow filter walks every term. Writes keep the counts equal to a fresh
    /// count.
    #[tokio::test]
    async fn common_terms_only_score_what_rare_terms_and_known_candidates_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = CollectionSpec::builtin();
        spec.lexical.as_mut().unwrap().common_term_points = 20;
        let mut store = EdgeVectorStore::open(dir.path(), &spec).await.unwrap();
        let mut rng = fastrand::Rng::with_seed(11);
        // harbor: 100 points, lantern: 47, kettle: 50 (common); zeppelin: 5 (rare), two of them longer and
        // with lantern too, so that lantern reorders what zeppelin alone would rank first.
        let points: Vec<VectorPoint> = (0..100)
            .map(|n| {
                let mut point = point(&mut rng);
                point.context.content = match n {
                    0 | 20 => format!("zeppelin lantern lantern harbor note {n} extra words"),
                    40 | 60 | 80 => format!("zeppelin harbor note {n}"),
                    n if n % 2 == 0 => format!("harbor lantern lantern note {n}"),
                    n => format!("harbor kettle note {n}"),
                };
                point
            })
            .collect();
        store.upsert(points.clone()).await.unwrap();
        let scope = ReadScope { agent_id: "a".into(), admin: true, sessions: None };
        let filter = ContextFilter::parse(ContextFilterArgs::default(), scope, Timestamp(2)).unwrap();
        let lexical = store.lexical.clone().unwrap();
        let term = |word: &str| lexical.query(word).0[0];
        let (harbor, zeppelin) = (term("harbor"), term("zeppelin"));

        store.count_terms_once();
        for _ in 0..500 {
            if store.terms.points_with(harbor).is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!((store.terms.points_with(harbor), store.terms.points_with(zeppelin)), (Some(100), Some(5)));
        assert_eq!(store.terms.points_with(term("lantern")), Some(47));

        let ranked = |hits: LexicalHits| -> Vec<(Uuid, f32)> {
            let mut all: Vec<(Uuid, f32)> =
                hits.hits.iter().map(|h| (h.context.id, h.score)).chain(hits.known.iter().copied()).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1));
            all
        };
        let none = HashSet::new();
        let id = |n: usize| points[n].context.id;
        // 100 points are a narrow filter: every term is walked, as without counts.
        let narrow = ranked(store.lexical("zeppelin lantern", &filter, 8, false, none.clone()).await.unwrap().unwrap());
        assert_eq!(narrow.len(), 8);
        store.plain_search_points = 0;
        let planned =
            ranked(store.lexical("zeppelin lantern", &filter, 8, false, none.clone()).await.unwrap().unwrap());
        let top3 = ranked(store.lexical("zeppelin lantern", &filter, 3, false, none.clone()).await.unwrap().unwrap());
        store.common_term_points = 0;
        let walked =
            ranked(store.lexical("zeppelin lantern", &filter, 100, false, none.clone()).await.unwrap().unwrap());
        let walked_score: HashMap<Uuid, f32> = walked.iter().copied().collect();
        let rare: HashSet<Uuid> = [0, 20, 40, 60, 80].into_iter().map(id).collect();
        assert_eq!(planned.iter().map(|h| h.0).collect::<HashSet<_>>(), rare, "the rare term's points, not 8");
        for (id, score) in &planned {
            let walked = walked_score[id];
            assert!((score - walked).abs() <= 1e-4 * walked, "{score} vs a full walk's {walked}");
        }
        let best = |hits: &[(Uuid, f32)]| hits.iter().take(2).map(|h| h.0).collect::<HashSet<_>>();
        assert_eq!(best(&walked), [id(0), id(20)].into(), "lantern lifts the longer zeppelin points");
        assert_eq!(best(&top3), best(&walked), "the best of the rare candidates under the whole query");

        let known: HashSet<Uuid> = [1, 2, 3].into_iter().map(id).collect();
        let walked_common = store.lexical("harbor lantern", &filter, 100, false, known.clone()).await.unwrap().unwrap();
        store.common_term_points = 20;
        let common = store.lexical("harbor lantern", &filter, 100, false, known.clone()).await.unwrap().unwrap();
        assert!(common.hits.is_empty() && common.known.len() == 3, "only the known candidates: {common:?}");
        let walked_common: HashMap<Uuid, f32> = ranked(walked_common).into_iter().collect();
        for (id, score) in &common.known {
            assert!((score - walked_common[id]).abs() <= 1e-4 * walked_common[id]);
        }
        let alone = store.lexical("harbor lantern", &filter, 7, false, none).await.unwrap().unwrap();
        assert_eq!(alone.hits.len(), 7, "without known candidates every term is walked");

        let mut changed = points[0].clone();
        changed.context.content = "harbor kettle".into();
        store.upsert(vec![changed]).await.unwrap();
        store.delete(&[points[20].context.id, points[21].context.id]).await.unwrap();
        assert_eq!(store.terms.points_with(zeppelin), Some(3));
        assert_eq!(store.terms.points_with(harbor), Some(98));
        let recount = TermCounts::default();
        assert!(recount.claim_count());
        assert_eq!(count_terms(&store.shard, &store.gate, &recount, &lexical.name).unwrap(), 98);
        for word in ["harbor", "lantern", "kettle", "zeppelin", "note", "extra"] {
            assert_eq!(store.terms.points_with(term(word)), recount.points_with(term(word)), "{word}");
        }
        let idf = |counts: &TermCounts| counts.idf(&[harbor, zeppelin, term("kettle")]);
        assert!(idf(&store.terms).is_some() && idf(&store.terms) == idf(&recount), "N and df as a fresh count");
    }

    /// The filter built in qdrant-edge's types equals the REST JSON read by qdrant-edge, for every scope and
    /// every condition the service builds.
    #[test]
    fn the_typed_filter_is_the_json_filter() {
        let args: ContextFilterArgs = serde_json::from_value(serde_json::json!({
            "session_id": "s", "types": ["note", "plan"], "tags_any": ["a", "b"], "tags_all": ["c", "d"],
            "agent_ids": ["x"], "created_after": "2026-01-01T00:00:00Z", "created_before": "2026-02-01T00:00:00Z",
            "visibility": ["public", "private"], "metadata": {"team": "core", "n": 2, "flag": true, "ratio": 0.5}
        }))
        .unwrap();
        for (admin, sessions) in [(false, None), (true, None), (false, Some(vec!["s".to_string(), "t".into()]))] {
            let scope = ReadScope { agent_id: "bob".into(), admin, sessions };
            for args in [ContextFilterArgs::default(), args.clone()] {
                let filter = ContextFilter::parse(args, scope.clone(), Timestamp(10)).unwrap();
                let json = crate::store::vector::filter::to_qdrant_json(&filter);
                let read: Filter = serde_json::from_value(json.clone()).unwrap();
                assert_eq!(qdrant_filter(&filter).unwrap(), read, "{json}");
            }
        }
    }

    /// Points written before the payload carried `public` are still seen by the scopes their `visibility`
    /// allows.
    #[tokio::test]
    async fn points_without_the_public_flag_match_by_visibility() {
        let dir = tempfile::tempdir().unwrap();
        let store = EdgeVectorStore::open(dir.path(), &CollectionSpec::builtin()).await.unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        let mut written = Vec::new();
        for (n, (visibility, author)) in [
            (Visibility::Public, "alice"),
            (Visibility::Private, "bob"),
            (Visibility::Private, "alice"),
            (Visibility::AdminOnly, "bob"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut point = point(&mut rng);
            (point.context.visibility, point.context.agent_id) = (visibility, author.into());
            let mut payload = to_payload(&point.context);
            if n < 3 {
                payload.as_object_mut().unwrap().remove("public");
            }
            let vectors = Vectors::new_named(vec![(String::new(), Vector::new_dense(point.vector.clone()))]);
            let operation = PointInsertOperations::PointsList(vec![
                PointStruct::new(point_id(point.context.id), vectors, payload).into(),
            ]);
            store.shard.update(UpdateOperation::PointOperation(PointOperations::UpsertPoints(operation))).unwrap();
            written.push(point);
        }
        let mut fresh = point(&mut rng);
        fresh.context.visibility = Visibility::Public;
        store.upsert(vec![fresh.clone()]).await.unwrap();

        let scope = ReadScope { agent_id: "bob".into(), admin: false, sessions: None };
        let filter = ContextFilter::parse(ContextFilterArgs::default(), scope, Timestamp(2)).unwrap();
        let mut expected = vec![written[0].context.id, written[1].context.id, fresh.context.id];
        expected.sort();
        let mut seen: Vec<Uuid> = store.scroll(&filter, 10).await.unwrap().into_iter().map(|c| c.id).collect();
        seen.sort();
        assert_eq!(seen, expected);
        let hits = store.search(written[2].vector.clone(), &filter, 10, true).await.unwrap();
        let mut found: Vec<Uuid> = hits.into_iter().map(|hit| hit.context.id).collect();
        found.sort();
        assert_eq!(found, expected);
    }

    #[test]
    fn wal_truncation_keeps_the_newest_closed_and_every_open_segment() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["closed-0", "closed-6500", "closed-13000", "closed-19500", "open-4", "open-5", "first-index"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        truncate_wal_prefix(dir.path()).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["closed-19500", "first-index", "open-4", "open-5"]);
        truncate_wal_prefix(&dir.path().join("missing")).unwrap();
    }
}
