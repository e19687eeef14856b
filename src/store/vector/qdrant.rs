//! The scale-out vector store on a Qdrant server or cluster (qdrant-client, gRPC). It shares everything but the
//! transport with the embedded store: the collection definition (`collections/`), the payload mapping
//! (`payload.rs`) and the filter (`filter.rs`, Qdrant REST JSON, converted here into the gRPC types). Writes
//! use `wait = true`, so a search right after an acknowledged write sees it, as with the embedded store.
//!
//! A cluster is given as several node URLs. qdrant-client talks to one URL, so there is a client per node;
//! calls go to the nodes in turn, move on to the next node when one does not answer (and skip that node for
//! a cooldown), and the circuit breaker opens only when no node answers. Every call the store makes is
//! idempotent (upserts and deletes by id, reads), so repeating one on another node is safe. The collection
//! is created with the definition's cluster layout (shards, replication factor, write consistency).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    BoolIndexParamsBuilder, Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder, HnswConfigDiffBuilder,
    IntegerIndexParamsBuilder, KeywordIndexParamsBuilder, Modifier, NamedVectors, OptimizersConfigDiffBuilder, PointId,
    PointStruct, PointsIdsList, QuantizationSearchParamsBuilder, QuantizationType, Query, QueryPointsBuilder, Range,
    ScalarQuantizationBuilder, ScrollPointsBuilder, SearchParams, SearchParamsBuilder, SparseVectorParamsBuilder,
    SparseVectorsConfigBuilder, UpdateCollectionBuilder, UpsertPointsBuilder, Vector, VectorInput, VectorParamsBuilder,
    VectorsSelector, WriteOrdering, WriteOrderingType, r#match::MatchValue, point_id::PointIdOptions, vector_output,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::collection::QuantizationSearchSpec;
use super::filter::to_qdrant_json;
use super::lexical::Lexical;
use super::payload::{from_payload, to_payload};
use super::{ClusterSpec, CollectionSpec, LexicalHit, VectorHit, VectorPoint, VectorStore};
use crate::domain::{Context, ContextFilter};
use crate::error::{StoreError, StoreResult};
use crate::store::breaker::CircuitBreaker;

#[derive(Debug, Clone)]
pub struct QdrantOptions {
    /// gRPC URL, e.g. http://qdrant:6334; a cluster's node URLs separated by commas.
    pub url: String,
    pub api_key: Option<String>,
    /// Overrides the collection name of the definition (several deployments on one cluster).
    pub collection: Option<String>,
    /// gRPC channels kept open.
    pub channels: usize,
    pub timeout: Duration,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// Overrides of the definition's cluster layout.
    pub cluster: ClusterSpec,
    /// "weak", "medium" or "strong".
    pub write_ordering: String,
    /// How long `connect` tries again to set the collection up (see `settle_collection`).
    pub startup_wait: Duration,
}

/// One server (or cluster node) and until when it is skipped after failing to answer.
struct Node {
    url: String,
    client: Qdrant,
    /// Milliseconds since the store's `epoch`; 0 = not skipped.
    skip_until: AtomicU64,
}

pub struct QdrantVectorStore {
    nodes: Vec<Node>,
    /// Where the next call starts in `nodes`.
    next: AtomicUsize,
    epoch: Instant,
    collection: String,
    hnsw_ef: u64,
    /// How searches use the quantized vectors, when the collection has them.
    quantization: Option<QuantizationSearchSpec>,
    ordering: WriteOrdering,
    breaker: CircuitBreaker,
    /// How long a node that did not answer is skipped.
    cooldown: Duration,
    /// The request timeout: an attempt on one node is given this long plus a grace second.
    timeout: Duration,
    /// The lexical stage, when the collection has its sparse vector (set once the collection is checked).
    lexical: Option<Lexical>,
}

fn write_ordering(name: &str) -> StoreResult<WriteOrdering> {
    let kind = match name {
        "weak" => WriteOrderingType::Weak,
        "medium" => WriteOrderingType::Medium,
        "strong" => WriteOrderingType::Strong,
        other => {
            return Err(StoreError::Backend(format!(
                "vector.qdrant.write_ordering '{other}' is not one of weak, medium, strong"
            )));
        }
    };
    Ok(WriteOrdering { r#type: kind.into() })
}

fn qdrant_error(err: qdrant_client::QdrantError) -> StoreError {
    let text = err.to_string();
    if refused(&err) {
        return StoreError::Backend(format!("{REFUSED}: {text}"));
    }
    // Transport failures (refused, reset, timed out, a stream cancelled when its connection dropped) mean the
    // server is unreachable; the rest are answers. tonic spells it "cancelled" and "canceled".
    let lower = text.to_ascii_lowercase();
    let unreachable = ["transport", "connect", "unavailable", "deadlineexceeded", "deadline", "timed out", "cancel"];
    if unreachable.iter().any(|needle| lower.contains(needle)) {
        StoreError::Unavailable(format!("qdrant: {text}"))
    } else {
        StoreError::Backend(format!("qdrant: {text}"))
    }
}

/// How a refusal that asking again cannot change starts its message (see `refused`).
const REFUSED: &str = "qdrant refused the request";

/// Answers no retry can change: a wrong API key, a request the server finds invalid (a definition it
/// cannot take), a call it does not implement, a URL or value the client cannot form.
fn refused(err: &qdrant_client::QdrantError) -> bool {
    use qdrant_client::QdrantError;
    // gRPC status codes (tonic's `Code`, not a dependency of this crate): InvalidArgument 3, PermissionDenied
    // 7, Unimplemented 12, Unauthenticated 16.
    const FINAL: [i32; 4] = [3, 7, 12, 16];
    match err {
        QdrantError::ResponseError { status } => FINAL.contains(&(status.code() as i32)),
        QdrantError::ConversionError(_) | QdrantError::InvalidUri(_) => true,
        _ => false,
    }
}

/// One REST-notation condition (as written by `filter.rs`) as a gRPC condition.
fn condition(json: &Value) -> StoreResult<Condition> {
    let unsupported = || StoreError::Backend(format!("filter condition not supported by the Qdrant mapping: {json}"));
    let object = json.as_object().ok_or_else(unsupported)?;
    if object.contains_key("must") || object.contains_key("should") || object.contains_key("must_not") {
        return Ok(Condition::from(filter(json)?));
    }
    if let Some(empty) = object.get("is_empty") {
        let key = empty.get("key").and_then(Value::as_str).ok_or_else(unsupported)?;
        return Ok(Condition::is_empty(key));
    }
    let key = object.get("key").and_then(Value::as_str).ok_or_else(unsupported)?.to_string();
    if let Some(matcher) = object.get("match") {
        let value: MatchValue = match (matcher.get("value"), matcher.get("any")) {
            (Some(Value::String(s)), _) => s.clone().into(),
            (Some(Value::Bool(b)), _) => (*b).into(),
            (Some(Value::Number(n)), _) => n.as_i64().ok_or_else(unsupported)?.into(),
            (_, Some(Value::Array(items))) if items.iter().all(Value::is_string) => {
                items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect::<Vec<_>>().into()
            }
            (_, Some(Value::Array(items))) if items.iter().all(Value::is_i64) => {
                items.iter().filter_map(Value::as_i64).collect::<Vec<_>>().into()
            }
            _ => return Err(unsupported()),
        };
        return Ok(Condition::matches(key, value));
    }
    if let Some(bounds) = object.get("range") {
        let bound = |name: &str| bounds.get(name).and_then(Value::as_f64);
        return Ok(Condition::range(
            key,
            Range { lt: bound("lt"), gt: bound("gt"), gte: bound("gte"), lte: bound("lte") },
        ));
    }
    Err(unsupported())
}

/// A REST-notation filter (`{"must": [...], "should": [...], "must_not": [...]}`) as a gRPC filter.
pub(crate) fn filter(json: &Value) -> StoreResult<Filter> {
    let list = |name: &str| -> StoreResult<Vec<Condition>> {
        json.get(name)
            .and_then(Value::as_array)
            .map(|items| items.iter().map(condition).collect())
            .unwrap_or(Ok(vec![]))
    };
    Ok(Filter { must: list("must")?, should: list("should")?, must_not: list("must_not")?, ..Default::default() })
}

fn point_uuid(id: Option<PointId>) -> StoreResult<Uuid> {
    match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Uuid(text)) => {
            Uuid::parse_str(&text).map_err(|e| StoreError::Backend(format!("qdrant point id {text}: {e}")))
        }
        other => Err(StoreError::Backend(format!("qdrant point id is not a UUID: {other:?}"))),
    }
}

fn payload_json(payload: std::collections::HashMap<String, qdrant_client::qdrant::Value>) -> Map<String, Value> {
    payload.into_iter().map(|(k, v)| (k, v.into_json())).collect()
}

fn point_ids(ids: &[Uuid]) -> Vec<PointId> {
    ids.iter().map(|id| PointId::from(id.to_string())).collect()
}

/// The definition's indexing threshold and segment cap (left to the server when the definition has none).
fn optimizers(spec: &CollectionSpec) -> OptimizersConfigDiffBuilder {
    let wanted = &spec.optimizers_config;
    let mut optimizers = OptimizersConfigDiffBuilder::default().indexing_threshold(wanted.indexing_threshold_kb as u64);
    if let Some(max_kb) = wanted.max_segment_size_kb {
        optimizers = optimizers.max_segment_size(max_kb as u64);
    }
    optimizers
}

/// The definition's distance in the server's terms.
fn distance(spec: &CollectionSpec) -> StoreResult<Distance> {
    match spec.vectors.distance.as_str() {
        "Cosine" => Ok(Distance::Cosine),
        "Dot" => Ok(Distance::Dot),
        "Euclid" => Ok(Distance::Euclid),
        "Manhattan" => Ok(Distance::Manhattan),
        other => Err(StoreError::Backend(format!("unknown distance '{other}' in the collection definition"))),
    }
}

/// The definition's scalar quantization in the server's terms.
fn scalar_quantization(spec: &CollectionSpec) -> Option<qdrant_client::qdrant::ScalarQuantization> {
    let quantized = spec.quantization_config.as_ref()?;
    let mut scalar = ScalarQuantizationBuilder::default().r#type(QuantizationType::Int8.into());
    if let Some(quantile) = quantized.scalar.quantile {
        scalar = scalar.quantile(quantile);
    }
    if let Some(always_ram) = quantized.scalar.always_ram {
        scalar = scalar.always_ram(always_ram);
    }
    Some(scalar.build())
}

impl QdrantVectorStore {
    /// An exact search reads the original vectors only, so it stays the ground truth.
    fn search_params(&self, exact: bool) -> SearchParams {
        let mut params = SearchParamsBuilder::default().hnsw_ef(self.hnsw_ef).exact(exact);
        if let Some(q) = self.quantization {
            params = params.quantization(
                QuantizationSearchParamsBuilder::default()
                    .ignore(exact)
                    .rescore(q.rescore)
                    .oversampling(q.oversampling),
            );
        }
        params.build()
    }

    /// Deletes the collection (`reindex --recreate` makes it again from the definition); absent is fine.
    pub async fn drop_collection(options: &QdrantOptions, spec: &CollectionSpec) -> StoreResult<()> {
        let url = options.url.split(',').map(str::trim).find(|u| !u.is_empty()).unwrap_or_default();
        let mut config = Qdrant::from_url(url).timeout(options.timeout).skip_compatibility_check();
        if let Some(key) = &options.api_key {
            config = config.api_key(key.clone());
        }
        let client = config.build().map_err(qdrant_error)?;
        let name = options.collection.clone().unwrap_or_else(|| spec.name.clone());
        if client.collection_exists(name.clone()).await.map_err(qdrant_error)? {
            client.delete_collection(name).await.map_err(qdrant_error)?;
        }
        Ok(())
    }

    /// Connects and creates the collection (with its payload indexes) from the definition when missing.
    pub async fn connect(options: &QdrantOptions, spec: &CollectionSpec) -> StoreResult<Self> {
        let urls: Vec<&str> = options.url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        if urls.is_empty() {
            return Err(StoreError::Backend("vector.qdrant.url names no server".into()));
        }
        let nodes = urls
            .iter()
            .map(|url| {
                // The client's version check warns at every start against a server one minor version apart
                // (1.20 against the 1.18 the tests run); the vector conformance suite runs against that
                // server instead. Channels connect lazily: a node that is down does not stop the start.
                let mut config = Qdrant::from_url(url)
                    .timeout(options.timeout)
                    .connect_timeout(options.timeout)
                    .skip_compatibility_check();
                config.set_pool_size(options.channels.max(1));
                if let Some(key) = &options.api_key {
                    config = config.api_key(key.clone());
                }
                let client = config.build().map_err(qdrant_error)?;
                Ok(Node { url: url.to_string(), client, skip_until: AtomicU64::new(0) })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let collection = options.collection.clone().unwrap_or_else(|| spec.name.clone());
        let store = Self {
            nodes,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            collection,
            hnsw_ef: spec.search.hnsw_ef as u64,
            quantization: spec.search_quantization(),
            ordering: write_ordering(&options.write_ordering)?,
            breaker: CircuitBreaker::new("qdrant", options.breaker_threshold, options.breaker_cooldown),
            cooldown: options.breaker_cooldown,
            timeout: options.timeout,
            lexical: None,
        };
        let mut store = store;
        let layout = ClusterSpec {
            shard_number: options.cluster.shard_number.or(spec.cluster.shard_number),
            replication_factor: options.cluster.replication_factor.or(spec.cluster.replication_factor),
            write_consistency_factor: options
                .cluster
                .write_consistency_factor
                .or(spec.cluster.write_consistency_factor),
        };
        // Checked before the first call: a definition naming an unknown distance is not worth waiting for.
        distance(spec)?;
        let lexical = match &spec.lexical {
            Some(lexical) => Some(Lexical::new(lexical)?),
            None => None,
        };
        if store.settle_collection(spec, &layout, options.startup_wait).await? {
            store.lexical = lexical;
        }
        Ok(store)
    }

    /// `ensure_collection`, tried again (at growing intervals, up to 5 s) until `options.startup_wait` has
    /// passed: replicas starting together on a busy cluster see creates time out, a collection that exists
    /// before its shards are active, and a leader election, and a server started beside the service (docker
    /// compose) answers a moment later; a start waits for them instead of exiting on the first such answer.
    /// A refusal no retry can change (a wrong API key, a definition the server rejects) fails at once.
    async fn settle_collection(
        &self,
        spec: &CollectionSpec,
        layout: &ClusterSpec,
        wait: Duration,
    ) -> StoreResult<bool> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            match self.ensure_collection(spec, layout).await {
                Ok(has_lexical) => return Ok(has_lexical),
                Err(StoreError::Backend(message)) if message.starts_with(REFUSED) => {
                    return Err(StoreError::Backend(message));
                }
                Err(err) if started.elapsed() + pause >= wait => return Err(err),
                Err(err) => {
                    tracing::warn!(collection = %self.collection, error = %err, "the collection is not set up yet; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs `op` on one node, moving on to the next when a node does not answer (unreachable, or silent past
    /// the timeout), and once to the next after any other error when there are several (a cluster answers
    /// "retry" while it moves a shard or elects a leader). Nodes being skipped are tried last.
    async fn call<T, F, Fut>(&self, op: F) -> StoreResult<T>
    where
        F: Fn(Qdrant) -> Fut,
        Fut: std::future::Future<Output = Result<T, qdrant_client::QdrantError>>,
    {
        let count = self.nodes.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let mut order: Vec<&Node> = (0..count).map(|i| &self.nodes[(start + i) % count]).collect();
        order.sort_by_key(|node| node.skip_until.load(Ordering::Relaxed) > now);
        let mut answered_retry = count > 1;
        let mut last = None;
        for node in order {
            let limit = self.timeout + Duration::from_secs(1);
            let error = match tokio::time::timeout(limit, op(node.client.clone())).await {
                Ok(Ok(value)) => {
                    node.skip_until.store(0, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(err)) => qdrant_error(err),
                Err(_) => StoreError::Unavailable(format!(
                    "qdrant {} did not answer within {} ms",
                    node.url,
                    limit.as_millis()
                )),
            };
            match error {
                StoreError::Unavailable(_) => {
                    if count > 1 {
                        tracing::warn!(node = %node.url, %error, "qdrant node did not answer: trying the next");
                    }
                    node.skip_until.store(self.now_ms() + self.cooldown.as_millis() as u64, Ordering::Relaxed);
                }
                _ if std::mem::take(&mut answered_retry) => {
                    tracing::info!(node = %node.url, %error, "qdrant answered with an error: once more on the next node");
                }
                answer => return Err(answer),
            }
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| StoreError::Unavailable("qdrant: no node to call".into())))
    }

    /// Brings an existing collection's quantization to the definition's (the server then rebuilds its
    /// segments in the background), so a changed definition reaches a store made before it.
    async fn follow_quantization(
        &self,
        spec: &CollectionSpec,
        current: Option<qdrant_client::qdrant::QuantizationConfig>,
    ) -> StoreResult<()> {
        use qdrant_client::qdrant::{Disabled, quantization_config, quantization_config_diff};
        let wanted = scalar_quantization(spec);
        let same = match (&wanted, current.and_then(|c| c.quantization)) {
            (Some(wanted), Some(quantization_config::Quantization::Scalar(current))) => *wanted == current,
            (None, None) => true,
            _ => false,
        };
        if same {
            return Ok(());
        }
        let change: quantization_config_diff::Quantization = match wanted {
            Some(scalar) => scalar.into(),
            None => Disabled {}.into(),
        };
        self.update_collection(
            UpdateCollectionBuilder::new(&self.collection).quantization_config(change),
            "quantization",
        )
        .await
    }

    /// Brings an existing collection's original vectors to the definition's place (in RAM, or memory-mapped
    /// from disk with `vectors.on_disk`); the server moves them as it rebuilds segments.
    async fn follow_vector_storage(
        &self,
        spec: &CollectionSpec,
        current: Option<qdrant_client::qdrant::VectorsConfig>,
    ) -> StoreResult<()> {
        use qdrant_client::qdrant::{VectorParamsDiffBuilder, vectors_config, vectors_config_diff};
        // Named vectors: not a collection a store made (it makes one unnamed dense vector); left alone.
        let Some(vectors_config::Config::Params(params)) = current.and_then(|c| c.config) else {
            return Ok(());
        };
        #[allow(deprecated)] // `memory` supersedes it from Qdrant 1.19; the servers this runs against know `on_disk`.
        let on_disk = params.on_disk.unwrap_or(false);
        if on_disk == spec.vectors.on_disk {
            return Ok(());
        }
        let diff = vectors_config_diff::Config::Params(
            VectorParamsDiffBuilder::default().on_disk(spec.vectors.on_disk).into(),
        );
        self.update_collection(UpdateCollectionBuilder::new(&self.collection).vectors_config(diff), "vector storage")
            .await
    }

    /// Applies a change to the existing collection's settings (the server rebuilds segments as needed).
    async fn update_collection(&self, change: UpdateCollectionBuilder, what: &str) -> StoreResult<()> {
        let request: qdrant_client::qdrant::UpdateCollection = change.into();
        self.call(|client| {
            let request = request.clone();
            async move { client.update_collection(request).await }
        })
        .await?;
        tracing::info!(collection = %self.collection, "{what} changed to the definition's");
        Ok(())
    }

    /// Brings an existing collection's indexing threshold and segment cap to the definition's (a cap the
    /// definition leaves out keeps whatever the collection has).
    async fn follow_optimizers(
        &self,
        spec: &CollectionSpec,
        current: Option<qdrant_client::qdrant::OptimizersConfigDiff>,
    ) -> StoreResult<()> {
        let wanted = &spec.optimizers_config;
        let current = current.unwrap_or_default();
        let threshold = wanted.indexing_threshold_kb as u64;
        let max_segment = wanted.max_segment_size_kb.map(|kb| kb as u64);
        let same_threshold = current.indexing_threshold == Some(threshold);
        let same_max_segment = max_segment.is_none() || current.max_segment_size == max_segment;
        if same_threshold && same_max_segment {
            return Ok(());
        }
        let change = UpdateCollectionBuilder::new(&self.collection).optimizers_config(optimizers(spec));
        self.update_collection(change, "optimizer settings").await
    }

    /// Creates the collection when missing, brings an existing one's quantization, vector storage and optimizer
    /// settings to the definition, makes the payload indexes it lacks and waits until it answers a read. Each step is
    /// safe to repeat, so a start-up cut off mid-way (or a replica racing another) finishes the job on the
    /// next attempt. Says whether the collection has the lexical stage's sparse vector (one made before the
    /// lexical stage existed has not, until `reindex --recreate` makes it again).
    async fn ensure_collection(&self, spec: &CollectionSpec, layout: &ClusterSpec) -> StoreResult<bool> {
        let name = self.collection.clone();
        let exists = self.call(|client| {
            let name = name.clone();
            async move { client.collection_exists(name).await }
        });
        let created = !exists.await?;
        if created {
            self.create_collection(spec, layout).await?;
        }
        let info = self
            .call(|client| {
                let name = name.clone();
                async move { client.collection_info(name).await }
            })
            .await?
            .result
            .ok_or_else(|| {
                StoreError::Unavailable(format!("qdrant: no description of '{}' in the answer", self.collection))
            })?;
        let config = info.config;
        self.follow_quantization(spec, config.as_ref().and_then(|c| c.quantization_config)).await?;
        let vectors = config.as_ref().and_then(|c| c.params.as_ref()).and_then(|p| p.vectors_config.clone());
        self.follow_vector_storage(spec, vectors).await?;
        self.follow_optimizers(spec, config.as_ref().and_then(|c| c.optimizer_config)).await?;
        for (field, schema) in &spec.payload_indexes {
            if info.payload_schema.contains_key(field) {
                continue;
            }
            let kind = schema.get("type").and_then(Value::as_str).or(schema.as_str()).unwrap_or("keyword");
            let flag = |name: &str| schema.get(name).and_then(Value::as_bool);
            // `enable_hnsw: false` keeps the server from building HNSW links per value of a field that only
            // filters (with `payload_m` set, it builds them for every indexed field by default).
            let request = match kind {
                "integer" => {
                    let mut params = IntegerIndexParamsBuilder::new(true, true);
                    if let Some(enable) = flag("enable_hnsw") {
                        params = params.enable_hnsw(enable);
                    }
                    CreateFieldIndexCollectionBuilder::new(&self.collection, field, FieldType::Integer)
                        .field_index_params(params)
                }
                "bool" => {
                    let mut params = BoolIndexParamsBuilder::default();
                    if let Some(enable) = flag("enable_hnsw") {
                        params = params.enable_hnsw(enable);
                    }
                    CreateFieldIndexCollectionBuilder::new(&self.collection, field, FieldType::Bool)
                        .field_index_params(params.build())
                }
                _ => {
                    let mut params = KeywordIndexParamsBuilder::default();
                    if let Some(tenant) = flag("is_tenant") {
                        params = params.is_tenant(tenant);
                    }
                    if let Some(enable) = flag("enable_hnsw") {
                        params = params.enable_hnsw(enable);
                    }
                    CreateFieldIndexCollectionBuilder::new(&self.collection, field, FieldType::Keyword)
                        .field_index_params(params)
                }
            };
            // On a collection just made (empty) the index is there when the call answers; on one that holds
            // points it is built in the background (filters work meanwhile, unindexed), so a start does not
            // wait out, and time out on, a large build.
            let request: qdrant_client::qdrant::CreateFieldIndexCollection = request.wait(created).into();
            self.call(|client| {
                let request = request.clone();
                async move { client.create_field_index(request).await }
            })
            .await?;
        }
        self.wait_until_readable().await?;
        let Some(lexical) = &spec.lexical else { return Ok(false) };
        let sparse = config.and_then(|c| c.params).and_then(|p| p.sparse_vectors_config);
        let has_lexical = sparse.is_some_and(|s| s.map.contains_key(&lexical.name));
        if !has_lexical {
            tracing::warn!(
                collection = %self.collection,
                "this collection was made without the lexical stage; searches run without it until \
                 `context-store reindex --recreate` rebuilds it from the graph"
            );
        }
        Ok(has_lexical)
    }

    /// Creates the collection from the definition (its payload indexes come after, in `ensure_collection`).
    async fn create_collection(&self, spec: &CollectionSpec, layout: &ClusterSpec) -> StoreResult<()> {
        let distance = distance(spec)?;
        let mut hnsw = HnswConfigDiffBuilder::default()
            .m(spec.hnsw_config.m as u64)
            .ef_construct(spec.hnsw_config.ef_construct as u64)
            .full_scan_threshold(spec.hnsw_config.full_scan_threshold_kb as u64);
        if let Some(payload_m) = spec.hnsw_config.payload_m {
            hnsw = hnsw.payload_m(payload_m as u64);
        }
        let mut request = CreateCollectionBuilder::new(&self.collection)
            .vectors_config(VectorParamsBuilder::new(spec.vectors.size as u64, distance).on_disk(spec.vectors.on_disk))
            .hnsw_config(hnsw)
            .optimizers_config(optimizers(spec));
        if let Some(scalar) = scalar_quantization(spec) {
            request = request.quantization_config(scalar);
        }
        if let Some(shards) = layout.shard_number {
            request = request.shard_number(shards);
        }
        if let Some(copies) = layout.replication_factor {
            request = request.replication_factor(copies);
        }
        if let Some(confirmations) = layout.write_consistency_factor {
            request = request.write_consistency_factor(confirmations);
        }
        if let Some(lexical) = &spec.lexical {
            let mut sparse = SparseVectorsConfigBuilder::default();
            sparse.add_named_vector_params(&lexical.name, SparseVectorParamsBuilder::default().modifier(Modifier::Idf));
            request = request.sparse_vectors_config(sparse);
        }
        let request: qdrant_client::qdrant::CreateCollection = request.into();
        let created = self
            .call(|client| {
                let request = request.clone();
                async move {
                    match client.create_collection(request).await {
                        Ok(_) => Ok(true),
                        // Replicas starting together race to create it (and a create that timed out on one
                        // node may have been applied): the loser goes on to the (idempotent) indexes.
                        Err(err) if err.to_string().contains("already exists") => Ok(false),
                        Err(err) => Err(err),
                    }
                }
            })
            .await?;
        if !created {
            tracing::info!(collection = %self.collection, "another replica created the collection first");
        }
        Ok(())
    }

    /// On a cluster, a collection's shard copies become active a moment after it is created; a read before
    /// then fails ("0 of 0 read operations failed"). Start-up waits until a count answers, at most
    /// `READABLE_WAIT`, and then gives the last error.
    async fn wait_until_readable(&self) -> StoreResult<()> {
        const READABLE_WAIT: Duration = Duration::from_secs(20);
        let started = Instant::now();
        loop {
            let request: qdrant_client::qdrant::CountPoints = CountPointsBuilder::new(&self.collection).into();
            let counted = self
                .call(|client| {
                    let request = request.clone();
                    async move { client.count(request).await }
                })
                .await;
            match counted {
                Ok(_) => return Ok(()),
                Err(err) if started.elapsed() >= READABLE_WAIT => return Err(err),
                Err(err) => {
                    tracing::info!(collection = %self.collection, error = %err, "waiting for the collection to be readable");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// A query (vector or lexical) through the breaker and the node rotation; its scored points.
    async fn query(
        &self,
        request: qdrant_client::qdrant::QueryPoints,
    ) -> StoreResult<Vec<qdrant_client::qdrant::ScoredPoint>> {
        let response = self
            .guarded(self.call(|client| {
                let request = request.clone();
                async move { client.query(request).await }
            }))
            .await?;
        Ok(response.result)
    }

    /// Calls the server (each node in turn, see `call`) through the circuit breaker. An attempt on one node
    /// takes at most the request timeout plus a grace second, even when it accepts connections and never
    /// answers; the breaker counts a call as failed only when no node answered.
    async fn guarded<T>(&self, call: impl std::future::Future<Output = StoreResult<T>>) -> StoreResult<T> {
        let limit = (self.timeout + Duration::from_secs(1)) * self.nodes.len() as u32;
        self.breaker.call(limit, call).await
    }
}

#[async_trait]
impl VectorStore for QdrantVectorStore {
    fn backend(&self) -> &'static str {
        "qdrant"
    }

    async fn upsert(&self, points: Vec<VectorPoint>) -> StoreResult<()> {
        if points.is_empty() {
            return Ok(());
        }
        let points = points
            .into_iter()
            .map(|p| {
                let payload = qdrant_client::Payload::try_from(to_payload(&p.context))
                    .map_err(|e| StoreError::Backend(format!("payload: {e}")))?;
                let id = p.context.id.to_string();
                let Some(lexical) = &self.lexical else { return Ok(PointStruct::new(id, p.vector, payload)) };
                let (indices, values) = lexical.document(&p.context.content);
                let mut vectors = NamedVectors::default().add_vector("", Vector::new_dense(p.vector));
                if !indices.is_empty() {
                    vectors = vectors.add_vector(lexical.name.clone(), Vector::new_sparse(indices, values));
                }
                Ok(PointStruct::new(id, vectors, payload))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let request: qdrant_client::qdrant::UpsertPoints =
            UpsertPointsBuilder::new(&self.collection, points).wait(true).ordering(self.ordering).into();
        self.guarded(self.call(|client| {
            let request = request.clone();
            async move { client.upsert_points(request).await.map(drop) }
        }))
        .await
    }

    async fn lexical_search(
        &self,
        query: &str,
        filter_spec: &ContextFilter,
        limit: usize,
        with_dense: bool,
    ) -> StoreResult<Option<Vec<LexicalHit>>> {
        let Some(lexical) = &self.lexical else { return Ok(None) };
        let (indices, values) = lexical.query(query);
        if indices.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let condition = filter(&to_qdrant_json(filter_spec))?;
        let mut request = QueryPointsBuilder::new(&self.collection)
            .query(Query::new_nearest(VectorInput::new_sparse(indices, values)))
            .using(lexical.name.clone())
            .filter(condition)
            .limit(limit as u64)
            .with_payload(true);
        if with_dense {
            request = request.with_vectors(VectorsSelector { names: vec![String::new()] });
        }
        let request: qdrant_client::qdrant::QueryPoints = request.into();
        self.query(request)
            .await?
            .into_iter()
            .map(|hit| {
                let dense = hit.vectors.and_then(|v| v.get_vector_by_name("")).and_then(|v| match v {
                    vector_output::Vector::Dense(dense) => Some(dense.data),
                    _ => None,
                });
                Ok(LexicalHit { context: from_payload(payload_json(hit.payload))?, score: hit.score, dense })
            })
            .collect::<StoreResult<Vec<_>>>()
            .map(Some)
    }

    async fn delete(&self, ids: &[Uuid]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let selector = PointsIdsList { ids: point_ids(ids) };
        let request: qdrant_client::qdrant::DeletePoints =
            DeletePointsBuilder::new(&self.collection).points(selector).wait(true).ordering(self.ordering).into();
        self.guarded(self.call(|client| {
            let request = request.clone();
            async move { client.delete_points(request).await.map(drop) }
        }))
        .await
    }

    async fn search(
        &self,
        vector: Vec<f32>,
        filter_spec: &ContextFilter,
        limit: usize,
        exact: bool,
    ) -> StoreResult<Vec<VectorHit>> {
        let condition = filter(&to_qdrant_json(filter_spec))?;
        let request: qdrant_client::qdrant::QueryPoints = QueryPointsBuilder::new(&self.collection)
            .query(vector)
            .filter(condition)
            .limit(limit as u64)
            .with_payload(true)
            .params(self.search_params(exact))
            .into();
        self.query(request)
            .await?
            .into_iter()
            .map(|hit| Ok(VectorHit { context: from_payload(payload_json(hit.payload))?, score: hit.score }))
            .collect()
    }

    async fn scroll(&self, filter_spec: &ContextFilter, limit: usize) -> StoreResult<Vec<Context>> {
        let condition = filter(&to_qdrant_json(filter_spec))?;
        let request: qdrant_client::qdrant::ScrollPoints = ScrollPointsBuilder::new(&self.collection)
            .filter(condition)
            .limit(limit.min(u32::MAX as usize) as u32)
            .with_payload(true)
            .into();
        let response = self
            .guarded(self.call(|client| {
                let request = request.clone();
                async move { client.scroll(request).await }
            }))
            .await?;
        response.result.into_iter().map(|point| from_payload(payload_json(point.payload))).collect()
    }

    async fn existing_ids(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let request: qdrant_client::qdrant::GetPoints =
            GetPointsBuilder::new(&self.collection, point_ids(ids)).with_payload(false).into();
        let response = self
            .guarded(self.call(|client| {
                let request = request.clone();
                async move { client.get_points(request).await }
            }))
            .await?;
        response.result.into_iter().map(|point| point_uuid(point.id)).collect()
    }

    async fn count(&self) -> StoreResult<u64> {
        let request: qdrant_client::qdrant::CountPoints = CountPointsBuilder::new(&self.collection).exact(true).into();
        let response = self
            .guarded(self.call(|client| {
                let request = request.clone();
                async move { client.count(request).await }
            }))
            .await?;
        Ok(response.result.map(|r| r.count).unwrap_or(0))
    }

    async fn indexed(&self) -> StoreResult<u64> {
        let name = self.collection.clone();
        let info = self
            .guarded(self.call(|client| {
                let name = name.clone();
                async move { client.collection_info(name).await }
            }))
            .await?;
        let all = info.result.and_then(|r| r.indexed_vectors_count).unwrap_or(0);
        // The count covers the sparse vectors of the lexical stage too: each point has one beside its dense one.
        Ok(if self.lexical.is_some() { all / 2 } else { all })
    }

    /// Writes were acknowledged with wait = true: the server's WAL already holds them.
    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }

    /// The server's own optimizers build indexes in the background.
    async fn optimize(&self) -> StoreResult<bool> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ContextFilterArgs, ReadScope, Timestamp};

    #[test]
    fn every_filter_the_service_builds_converts_to_grpc() {
        let args: ContextFilterArgs = serde_json::from_value(serde_json::json!({
            "session_id": "s", "types": ["note"], "tags_any": ["a", "b"], "tags_all": ["c"], "agent_ids": ["x"],
            "created_after": "2026-01-01T00:00:00Z", "visibility": ["public"],
            "metadata": {"team": "core", "n": 2, "flag": true, "ratio": 0.5}
        }))
        .unwrap();
        let scope = ReadScope { agent_id: "bob".into(), admin: false, sessions: Some(vec!["s".into()]) };
        let converted = filter(&to_qdrant_json(&ContextFilter::parse(args, scope, Timestamp(10)).unwrap())).unwrap();
        // Scope visibility, scope sessions, expiry, session, types, tags_any, tags_all, agents, created,
        // visibility and four metadata keys.
        assert_eq!(converted.must.len(), 14);
        assert!(condition(&serde_json::json!({"key": "x", "match": {"text": "y"}})).is_err(), "unknown kinds fail");
    }
}
