//! The scale-out vector store on a Qdrant server or cluster (qdrant-client, gRPC). It shares everything but the
//! transport with the embedded store: the collection definition (`collections/`), the payload mapping
//! (`payload.rs`) and the filter (`filter.rs`, Qdrant REST JSON, converted here into the gRPC types). Writes
//! use `wait = true`, so a search right after an acknowledged write sees it, as with the embedded store.

use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder,
    Distance, FieldType, Filter, GetPointsBuilder, HnswConfigDiffBuilder, KeywordIndexParamsBuilder,
    OptimizersConfigDiffBuilder, PointId, PointStruct, PointsIdsList, QueryPointsBuilder, Range, ScrollPointsBuilder,
    SearchParamsBuilder, UpsertPointsBuilder, VectorParamsBuilder, r#match::MatchValue, point_id::PointIdOptions,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::filter::to_qdrant_json;
use super::payload::{from_payload, to_payload};
use super::{CollectionSpec, VectorHit, VectorPoint, VectorStore};
use crate::domain::{Context, ContextFilter};
use crate::error::{StoreError, StoreResult};
use crate::store::breaker::CircuitBreaker;

#[derive(Debug, Clone)]
pub struct QdrantOptions {
    /// gRPC URL, e.g. http://qdrant:6334.
    pub url: String,
    pub api_key: Option<String>,
    /// Overrides the collection name of the definition (several deployments on one cluster).
    pub collection: Option<String>,
    /// gRPC channels kept open.
    pub channels: usize,
    pub timeout: Duration,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
}

pub struct QdrantVectorStore {
    client: Qdrant,
    collection: String,
    hnsw_ef: u64,
    breaker: CircuitBreaker,
    /// The request timeout: a call is given this long plus a grace second.
    timeout: Duration,
}

fn qdrant_error(err: qdrant_client::QdrantError) -> StoreError {
    let text = err.to_string();
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

impl QdrantVectorStore {
    /// Connects and creates the collection (with its payload indexes) from the definition when missing.
    pub async fn connect(options: &QdrantOptions, spec: &CollectionSpec) -> StoreResult<Self> {
        // The client's version check warns at every start against a server one minor version apart (1.20
        // against the 1.18 the tests run); the vector conformance suite runs against that server instead.
        let mut config = Qdrant::from_url(&options.url)
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .skip_compatibility_check();
        config.set_pool_size(options.channels.max(1));
        if let Some(key) = &options.api_key {
            config = config.api_key(key.clone());
        }
        let client = config.build().map_err(qdrant_error)?;
        let collection = options.collection.clone().unwrap_or_else(|| spec.name.clone());
        let store = Self {
            client,
            collection,
            hnsw_ef: spec.search.hnsw_ef as u64,
            breaker: CircuitBreaker::new("qdrant", options.breaker_threshold, options.breaker_cooldown),
            timeout: options.timeout,
        };
        store.ensure_collection(spec).await?;
        Ok(store)
    }

    async fn ensure_collection(&self, spec: &CollectionSpec) -> StoreResult<()> {
        if self.client.collection_exists(&self.collection).await.map_err(qdrant_error)? {
            return Ok(());
        }
        let distance = match spec.vectors.distance.as_str() {
            "Cosine" => Distance::Cosine,
            "Dot" => Distance::Dot,
            "Euclid" => Distance::Euclid,
            "Manhattan" => Distance::Manhattan,
            other => {
                return Err(StoreError::Backend(format!("unknown distance '{other}' in the collection definition")));
            }
        };
        let mut hnsw = HnswConfigDiffBuilder::default()
            .m(spec.hnsw_config.m as u64)
            .ef_construct(spec.hnsw_config.ef_construct as u64)
            .full_scan_threshold(spec.hnsw_config.full_scan_threshold_kb as u64);
        if let Some(payload_m) = spec.hnsw_config.payload_m {
            hnsw = hnsw.payload_m(payload_m as u64);
        }
        let request = CreateCollectionBuilder::new(&self.collection)
            .vectors_config(VectorParamsBuilder::new(spec.vectors.size as u64, distance))
            .hnsw_config(hnsw)
            .optimizers_config(
                OptimizersConfigDiffBuilder::default()
                    .indexing_threshold(spec.optimizers_config.indexing_threshold_kb as u64),
            );
        match self.client.create_collection(request).await {
            Ok(_) => {}
            // Replicas starting together race to create it: the loser goes on to the (idempotent) indexes.
            Err(err) if err.to_string().contains("already exists") => {
                tracing::info!(collection = %self.collection, "another replica created the collection first");
            }
            Err(err) => return Err(qdrant_error(err)),
        }
        for (field, schema) in &spec.payload_indexes {
            let kind = schema.get("type").and_then(Value::as_str).or(schema.as_str()).unwrap_or("keyword");
            let mut request = match kind {
                "integer" => CreateFieldIndexCollectionBuilder::new(&self.collection, field, FieldType::Integer),
                _ => CreateFieldIndexCollectionBuilder::new(&self.collection, field, FieldType::Keyword),
            };
            if kind == "keyword" && schema.get("is_tenant").and_then(Value::as_bool) == Some(true) {
                request = request.field_index_params(KeywordIndexParamsBuilder::default().is_tenant(true));
            }
            self.client.create_field_index(request.wait(true)).await.map_err(qdrant_error)?;
        }
        Ok(())
    }

    /// Calls the server through the circuit breaker. A call takes at most the request timeout (plus a grace
    /// second for the channel), even when the server accepts connections and never answers.
    async fn guarded<T>(&self, call: impl std::future::Future<Output = StoreResult<T>>) -> StoreResult<T> {
        self.breaker.call(self.timeout + Duration::from_secs(1), call).await
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
                Ok(PointStruct::new(p.context.id.to_string(), p.vector, payload))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        self.guarded(async {
            let request = UpsertPointsBuilder::new(&self.collection, points).wait(true);
            self.client.upsert_points(request).await.map_err(qdrant_error)?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, ids: &[Uuid]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.guarded(async {
            let selector = PointsIdsList { ids: point_ids(ids) };
            let request = DeletePointsBuilder::new(&self.collection).points(selector).wait(true);
            self.client.delete_points(request).await.map_err(qdrant_error)?;
            Ok(())
        })
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
        self.guarded(async {
            let request = QueryPointsBuilder::new(&self.collection)
                .query(vector)
                .filter(condition)
                .limit(limit as u64)
                .with_payload(true)
                .params(SearchParamsBuilder::default().hnsw_ef(self.hnsw_ef).exact(exact));
            let response = self.client.query(request).await.map_err(qdrant_error)?;
            response
                .result
                .into_iter()
                .map(|hit| Ok(VectorHit { context: from_payload(&payload_json(hit.payload))?, score: hit.score }))
                .collect()
        })
        .await
    }

    async fn scroll(&self, filter_spec: &ContextFilter, limit: usize) -> StoreResult<Vec<Context>> {
        let condition = filter(&to_qdrant_json(filter_spec))?;
        self.guarded(async {
            let request = ScrollPointsBuilder::new(&self.collection)
                .filter(condition)
                .limit(limit.min(u32::MAX as usize) as u32)
                .with_payload(true);
            let response = self.client.scroll(request).await.map_err(qdrant_error)?;
            response.result.into_iter().map(|point| from_payload(&payload_json(point.payload))).collect()
        })
        .await
    }

    async fn existing_ids(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.guarded(async {
            let request = GetPointsBuilder::new(&self.collection, point_ids(ids)).with_payload(false);
            let response = self.client.get_points(request).await.map_err(qdrant_error)?;
            response.result.into_iter().map(|point| point_uuid(point.id)).collect()
        })
        .await
    }

    async fn count(&self) -> StoreResult<u64> {
        self.guarded(async {
            let response =
                self.client.count(CountPointsBuilder::new(&self.collection).exact(true)).await.map_err(qdrant_error)?;
            Ok(response.result.map(|r| r.count).unwrap_or(0))
        })
        .await
    }

    async fn indexed(&self) -> StoreResult<u64> {
        self.guarded(async {
            let info = self.client.collection_info(&self.collection).await.map_err(qdrant_error)?;
            Ok(info.result.and_then(|r| r.indexed_vectors_count).unwrap_or(0))
        })
        .await
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
