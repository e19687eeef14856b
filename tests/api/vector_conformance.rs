//! The vector store's payload filter agrees with the in-memory oracle `ContextFilter::matches`,
//! scope and expiry included.

use context_store::domain::{
    Context, ContextFilter, ContextFilterArgs, ReadScope, Timestamp, Visibility, content_hash,
};
use context_store::store::vector::CollectionSpec;
use context_store::store::vector::edge::EdgeVectorStore;
use context_store::store::vector::qdrant::QdrantVectorStore;
use context_store::store::{VectorPoint, VectorStore};
use serde_json::json;
use uuid::Uuid;

pub fn random_vector(rng: &mut fastrand::Rng) -> Vec<f32> {
    let v: Vec<f32> = (0..384).map(|_| rng.f32() - 0.5).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

pub fn dataset(rng: &mut fastrand::Rng, now: Timestamp) -> Vec<VectorPoint> {
    let agents = ["alice", "bob", "carol"];
    let types = ["note", "decision", "code"];
    let tags = ["red", "green", "blue", "amber"];
    let visibilities = [Visibility::Public, Visibility::Private, Visibility::AdminOnly];
    (0..300)
        .map(|i| {
            let content = format!("context {i}");
            let mut item_tags: Vec<String> = tags.iter().filter(|_| rng.bool()).map(|t| t.to_string()).collect();
            item_tags.sort();
            let team = ["core", "web"][rng.usize(..2)];
            let created = Timestamp(now.millis() - 1_000_000 + i as i64 * 1000);
            VectorPoint {
                context: Context {
                    id: Uuid::now_v7(),
                    session_id: format!("s{}", i % 3),
                    agent_id: agents[rng.usize(..3)].into(),
                    context_type: types[rng.usize(..3)].into(),
                    content_hash: content_hash(&content),
                    content,
                    tags: item_tags,
                    metadata: json!({"priority": rng.i64(0..3), "team": team, "flag": rng.bool(), "owner:team": team})
                        .as_object()
                        .unwrap()
                        .clone(),
                    visibility: visibilities[rng.usize(..3)],
                    created_at: created,
                    updated_at: created,
                    version: 1,
                    expires_at: match rng.usize(..4) {
                        0 => Some(Timestamp(now.millis() - 10)),
                        1 => Some(Timestamp(now.millis() + 1_000_000)),
                        _ => None,
                    },
                },
                vector: random_vector(rng),
            }
        })
        .collect()
}

pub fn random_filter(rng: &mut fastrand::Rng, now: Timestamp) -> ContextFilter {
    let mut args = ContextFilterArgs::default();
    if rng.bool() {
        args.session_id = Some(format!("s{}", rng.usize(..3)));
    }
    if rng.u8(..3) == 0 {
        args.types = Some(vec!["note".into(), "code".into()]);
    }
    if rng.u8(..3) == 0 {
        args.tags_any = Some(vec!["red".into(), "blue".into()]);
    }
    if rng.u8(..4) == 0 {
        args.tags_all = Some(vec!["green".into(), "amber".into()]);
    }
    if rng.u8(..4) == 0 {
        args.agent_ids = Some(vec!["bob".into()]);
    }
    if rng.u8(..4) == 0 {
        args.created_after = Some(Timestamp(now.millis() - 600_000));
    }
    if rng.u8(..4) == 0 {
        args.metadata = Some(
            match rng.u8(..4) {
                3 => json!({"owner:team": "core"}),
                0 => json!({"team": "core"}),
                1 => json!({"priority": 2}),
                _ => json!({"flag": true}),
            }
            .as_object()
            .unwrap()
            .clone(),
        );
    }
    let scope = match rng.u8(..3) {
        0 => ReadScope { agent_id: "alice".into(), admin: false, sessions: None },
        1 => ReadScope { agent_id: "bob".into(), admin: false, sessions: None },
        _ => ReadScope { agent_id: "root".into(), admin: true, sessions: None },
    };
    ContextFilter::parse(args, scope, now).unwrap()
}

async fn filters_agree_with_the_in_memory_oracle(store: &dyn VectorStore) {
    let mut rng = fastrand::Rng::with_seed(42);
    let now = Timestamp::now();
    let points = dataset(&mut rng, now);
    store.upsert(points.clone()).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 300);
    for round in 0..60 {
        let filter = random_filter(&mut rng, now);
        let (got, expected) = scrolled_and_expected(store, &points, &filter).await;
        assert_eq!(got, expected, "round {round}: filter {filter:?}");
        let hits = store.search(random_vector(&mut rng), &filter, 1000, true).await.unwrap();
        assert_eq!(hits.len(), expected.len(), "round {round}: search applies the same filter");
    }
    // A context whose visibility changes is seen by its new scope only.
    let mut changed: Vec<VectorPoint> = points.iter().step_by(3).cloned().collect();
    for point in &mut changed {
        point.context.visibility = match point.context.visibility {
            Visibility::Public => Visibility::Private,
            Visibility::Private => Visibility::AdminOnly,
            Visibility::AdminOnly => Visibility::Public,
        };
    }
    store.upsert(changed.clone()).await.unwrap();
    let points: Vec<VectorPoint> =
        points.iter().map(|p| changed.iter().find(|c| c.context.id == p.context.id).unwrap_or(p).clone()).collect();
    for agent_id in ["alice", "bob"] {
        let scope = ReadScope { agent_id: agent_id.into(), admin: false, sessions: None };
        let filter = ContextFilter::parse(ContextFilterArgs::default(), scope, now).unwrap();
        let (got, expected) = scrolled_and_expected(store, &points, &filter).await;
        assert_eq!(got, expected, "{agent_id} after visibility changes");
        let hits = store.search(random_vector(&mut rng), &filter, 1000, true).await.unwrap();
        let mut found: Vec<Uuid> = hits.into_iter().map(|hit| hit.context.id).collect();
        found.sort();
        assert_eq!(found, expected, "{agent_id}: search after visibility changes");
    }
}

/// The ids the store's scroll returns for `filter` and those the oracle says it should, both sorted.
async fn scrolled_and_expected(
    store: &dyn VectorStore,
    points: &[VectorPoint],
    filter: &ContextFilter,
) -> (Vec<Uuid>, Vec<Uuid>) {
    let mut expected: Vec<Uuid> = points.iter().filter(|p| filter.matches(&p.context)).map(|p| p.context.id).collect();
    expected.sort();
    let mut got: Vec<Uuid> = store.scroll(filter, 1000).await.unwrap().into_iter().map(|c| c.id).collect();
    got.sort();
    (got, expected)
}

async fn payload_round_trips_and_deletes_remove_points(store: &dyn VectorStore) {
    let mut rng = fastrand::Rng::with_seed(1);
    let points = dataset(&mut rng, Timestamp::now());
    store.upsert(points[..10].to_vec()).await.unwrap();
    let filter = ContextFilter::parse(
        ContextFilterArgs::default(),
        ReadScope { agent_id: "root".into(), admin: true, sessions: None },
        Timestamp(0),
    )
    .unwrap();
    let hits = store.search(points[3].vector.clone(), &filter, 1, true).await.unwrap();
    assert_eq!(hits[0].context, points[3].context);
    assert!((hits[0].score - 1.0).abs() < 1e-4);
    store.delete(&[points[3].context.id]).await.unwrap();
    assert!(store.existing_ids(&[points[3].context.id]).await.unwrap().is_empty());
    assert_eq!(store.count().await.unwrap(), 9);
}

async fn lexical_search_ranks_by_rare_shared_terms_within_the_filter(store: &dyn VectorStore) {
    let mut rng = fastrand::Rng::with_seed(5);
    let mut points = dataset(&mut rng, Timestamp::now());
    let texts = [
        "the invoice for the printer was paid",
        "the printer jammed again on friday",
        "zanzibar office opening is planned",
        "the the the the",
        "printers and invoices everywhere in the office",
    ];
    for (point, text) in points.iter_mut().zip(texts) {
        point.context.content = text.to_string();
        point.context.expires_at = None;
        point.context.visibility = Visibility::Public;
    }
    store.upsert(points.clone()).await.unwrap();
    let everything = ContextFilter::parse(
        ContextFilterArgs::default(),
        ReadScope { agent_id: "root".into(), admin: true, sessions: None },
        Timestamp::now(),
    )
    .unwrap();
    let ranked = |hits: Vec<context_store::store::vector::LexicalHit>| -> Vec<String> {
        hits.into_iter().map(|h| h.context.content).collect()
    };
    let hits = store.lexical_search("zanzibar office", &everything, 10, true).await.unwrap().expect("a lexical index");
    assert_eq!(hits[0].context.content, texts[2], "the rare term decides");
    assert_eq!(hits.len(), 2, "only texts sharing a term: {:?}", ranked(hits.clone()));
    assert_eq!(hits[0].dense.as_deref(), Some(points[2].vector.as_slice()), "the dense vector when asked for");
    assert!(hits[0].score > hits[1].score);
    let found = ranked(store.lexical_search("printer invoice", &everything, 10, false).await.unwrap().unwrap());
    assert_eq!(found.len(), 3, "stemmed: printers and invoices match too: {found:?}");
    assert!(store.lexical_search("the of", &everything, 10, false).await.unwrap().unwrap().is_empty(), "stopwords");
    // Beside a pool: hits on known ids come back as ids and scores, the rest in full, with the same scores.
    let all = store.lexical_search("printer invoice office", &everything, 10, true).await.unwrap().unwrap();
    assert_eq!(all.len(), 4);
    let known: std::collections::HashSet<uuid::Uuid> = [all[0].context.id, all[2].context.id].into();
    let beside =
        store.lexical_search_beside("printer invoice office", &everything, 10, true, &known).await.unwrap().unwrap();
    assert_eq!(beside.known, vec![(all[0].context.id, all[0].score), (all[2].context.id, all[2].score)]);
    assert_eq!(beside.hits, vec![all[1].clone(), all[3].clone()], "in full, in score order, dense vectors too");
    // The filter applies as in the vector stage.
    let only_s0 = ContextFilter::parse(
        ContextFilterArgs { session_id: Some("s0".into()), ..Default::default() },
        ReadScope { agent_id: "root".into(), admin: true, sessions: None },
        Timestamp::now(),
    )
    .unwrap();
    let in_s0 = store.lexical_search("printer invoice office", &only_s0, 10, false).await.unwrap().unwrap();
    assert!(!in_s0.is_empty() && in_s0.iter().all(|h| h.context.session_id == "s0"));
    // A deleted point is gone from the lexical index too.
    store.delete(&[points[2].context.id]).await.unwrap();
    assert!(store.lexical_search("zanzibar", &everything, 10, false).await.unwrap().unwrap().is_empty());
}

/// Each suite function runs against qdrant-edge (in a temp dir) and, when `QDRANT_URL` names a server,
/// against Qdrant server in a fresh collection (scripts/test skips these otherwise, and says so).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod edge {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = EdgeVectorStore::open(dir.path(), &CollectionSpec::builtin()).await.unwrap();
                    super::$name(&store).await;
                }
            )*
            use super::*;
        }
        mod qdrant_server {
            $(
                #[tokio::test]
                #[ignore = "needs a Qdrant server: set QDRANT_URL (gRPC, e.g. http://127.0.0.1:6334)"]
                async fn $name() {
                    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL names a Qdrant server");
                    let mut settings = context_store::config::QdrantSettings { url, ..Default::default() };
                    settings.collection = Some(format!("test_{}", uuid::Uuid::now_v7().simple()));
                    let store = QdrantVectorStore::connect(&settings.options(), &CollectionSpec::builtin()).await.unwrap();
                    super::$name(&store).await;
                }
            )*
            use super::*;
        }
    };
}

conformance!(
    filters_agree_with_the_in_memory_oracle,
    payload_round_trips_and_deletes_remove_points,
    lexical_search_ranks_by_rare_shared_terms_within_the_filter
);

#[tokio::test]
async fn a_store_made_before_the_lexical_stage_opens_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = CollectionSpec::builtin();
    old.lexical = None;
    let store = EdgeVectorStore::open(dir.path(), &old).await.unwrap();
    let context = crate::helpers::public_context("an old note about invoices", "s", "alice");
    store.upsert(vec![VectorPoint { context, vector: random_vector(&mut fastrand::Rng::with_seed(2)) }]).await.unwrap();
    store.flush().await.unwrap();
    drop(store);
    let reopened = EdgeVectorStore::open(dir.path(), &CollectionSpec::builtin()).await.unwrap();
    assert_eq!(reopened.count().await.unwrap(), 1);
    let everything = ContextFilter::parse(
        ContextFilterArgs::default(),
        ReadScope { agent_id: "root".into(), admin: true, sessions: None },
        Timestamp::now(),
    )
    .unwrap();
    assert!(reopened.lexical_search("invoices", &everything, 10, false).await.unwrap().is_none(), "no lexical index");
    let context = crate::helpers::public_context("a new note about invoices", "s", "alice");
    reopened
        .upsert(vec![VectorPoint { context, vector: random_vector(&mut fastrand::Rng::with_seed(3)) }])
        .await
        .unwrap();
    assert_eq!(reopened.count().await.unwrap(), 2, "writes go on without it");
}

#[tokio::test]
async fn the_embedded_store_opens_in_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CollectionSpec::builtin();
    let first = EdgeVectorStore::open(dir.path(), &spec).await.unwrap();
    let context = crate::helpers::public_context("held by the first opener", "s", "alice");
    let point = VectorPoint { context, vector: random_vector(&mut fastrand::Rng::with_seed(1)) };
    first.upsert(vec![point]).await.unwrap();
    // A second opener (another process, as `export` or `doctor` beside a running server) is refused and
    // changes nothing.
    let second = EdgeVectorStore::open(dir.path(), &spec).await;
    match second {
        Err(context_store::error::StoreError::Unavailable(message)) => {
            assert!(message.contains("another process"), "{message}")
        }
        other => panic!("expected unavailable, got {:?}", other.map(|_| "an open store")),
    }
    assert_eq!(first.count().await.unwrap(), 1);
    first.flush().await.unwrap();
    drop(first);
    let reopened = EdgeVectorStore::open(dir.path(), &spec).await.unwrap();
    assert_eq!(reopened.count().await.unwrap(), 1, "the lock goes with the store");
}

/// A Qdrant server collection made without quantization (and with another segment cap and its vectors in the
/// other place) gains the definition's settings when a store opens it, and loses the quantization again when
/// the definition has none.
#[tokio::test]
#[ignore = "needs a Qdrant server: set QDRANT_URL (gRPC, e.g. http://127.0.0.1:6334)"]
async fn qdrant_server_collection_follows_the_definitions_quantization() {
    use qdrant_client::qdrant::quantization_config::Quantization;
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL names a Qdrant server");
    let collection = format!("test_{}", uuid::Uuid::now_v7().simple());
    let mut settings = context_store::config::QdrantSettings { url: url.clone(), ..Default::default() };
    settings.collection = Some(collection.clone());
    let quantization = || async {
        let client = qdrant_client::Qdrant::from_url(&url).skip_compatibility_check().build().unwrap();
        let info = client.collection_info(&collection).await.unwrap();
        info.result.and_then(|i| i.config).and_then(|c| c.quantization_config).and_then(|q| q.quantization)
    };
    let max_segment = || async {
        let client = qdrant_client::Qdrant::from_url(&url).skip_compatibility_check().build().unwrap();
        let info = client.collection_info(&collection).await.unwrap();
        info.result.and_then(|i| i.config).and_then(|c| c.optimizer_config).and_then(|o| o.max_segment_size)
    };
    #[allow(deprecated)] // the 1.18 server in ../shared/qdrant reports `on_disk`, not `memory`
    let on_disk = || async {
        use qdrant_client::qdrant::vectors_config::Config;
        let client = qdrant_client::Qdrant::from_url(&url).skip_compatibility_check().build().unwrap();
        let info = client.collection_info(&collection).await.unwrap();
        match info.result.and_then(|i| i.config).and_then(|c| c.params).and_then(|p| p.vectors_config) {
            Some(qdrant_client::qdrant::VectorsConfig { config: Some(Config::Params(params)) }) => {
                params.on_disk.unwrap_or(false)
            }
            other => panic!("expected one unnamed vector, got {other:?}"),
        }
    };
    let builtin = CollectionSpec::builtin();
    let mut plain = CollectionSpec { quantization_config: None, ..builtin.clone() };
    plain.optimizers_config.max_segment_size_kb = Some(50_000);
    plain.vectors.on_disk = !builtin.vectors.on_disk;
    let store = QdrantVectorStore::connect(&settings.options(), &plain).await.unwrap();
    let context = crate::helpers::public_context("a note kept across the change", "s", "alice");
    store.upsert(vec![VectorPoint { context, vector: random_vector(&mut fastrand::Rng::with_seed(3)) }]).await.unwrap();
    drop(store);
    // The payload indexes carry the definition's `enable_hnsw` (false for fields that only filter).
    let client = qdrant_client::Qdrant::from_url(&url).skip_compatibility_check().build().unwrap();
    let schema = client.collection_info(&collection).await.unwrap().result.unwrap().payload_schema;
    let enable_hnsw = |field: &str| {
        use qdrant_client::qdrant::payload_index_params::IndexParams;
        match schema[field].params.as_ref().and_then(|p| p.index_params.clone()) {
            Some(IndexParams::KeywordIndexParams(params)) => params.enable_hnsw,
            Some(IndexParams::IntegerIndexParams(params)) => params.enable_hnsw,
            Some(IndexParams::BoolIndexParams(params)) => params.enable_hnsw,
            other => panic!("{field}: unexpected index params {other:?}"),
        }
    };
    assert_eq!(enable_hnsw("agent_id"), Some(false));
    assert_eq!(enable_hnsw("created_at"), Some(false));
    assert_eq!(enable_hnsw("public"), Some(false));
    assert_ne!(enable_hnsw("session_id"), Some(false), "the tenant field keeps its HNSW links");
    assert_eq!(quantization().await, None, "made without quantization");
    assert_eq!(max_segment().await, Some(50_000));
    assert_eq!(on_disk().await, plain.vectors.on_disk);

    let store = QdrantVectorStore::connect(&settings.options(), &CollectionSpec::builtin()).await.unwrap();
    match quantization().await {
        Some(Quantization::Scalar(scalar)) => {
            assert_eq!(scalar.r#type, qdrant_client::qdrant::QuantizationType::Int8 as i32);
            assert_eq!(scalar.quantile, Some(0.99));
        }
        other => panic!("expected scalar int8 quantization, got {other:?}"),
    }
    assert_eq!(store.count().await.unwrap(), 1, "the point stays");
    assert_eq!(max_segment().await, builtin.optimizers_config.max_segment_size_kb.map(|kb| kb as u64));
    assert_eq!(on_disk().await, builtin.vectors.on_disk, "the vectors move to the definition's place");
    drop(store);

    QdrantVectorStore::connect(&settings.options(), &plain).await.unwrap();
    assert_eq!(quantization().await, None, "a definition without quantization turns it off");
    QdrantVectorStore::drop_collection(&settings.options(), &plain).await.unwrap();
}

/// A store started before its Qdrant server is up waits for it (within `startup_wait`) instead of exiting,
/// as a replica started beside its server by docker compose does; a wrong API key fails at once, not after
/// that wait; and a collection left half-made (a payload index missing, as when a start was cut off between
/// the create and the indexes) is finished by the next start.
#[tokio::test]
#[ignore = "needs ../shared/qdrant (its start script): scripts/test runs this"]
async fn qdrant_server_start_up_waits_for_the_server_and_finishes_a_half_made_collection() {
    let scripts = crate::helpers::qdrant_scripts();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = context_store::config::QdrantSettings { url: url.clone(), ..Default::default() };
    settings.collection = Some(format!("test_{}", Uuid::now_v7().simple()));
    settings.api_key = Some("the-right-key".into());
    let spec = CollectionSpec::builtin();
    let options = settings.options();
    assert!(options.startup_wait >= std::time::Duration::from_secs(60), "the default wait is generous");
    let connecting = tokio::spawn({
        let (options, spec) = (options.clone(), spec.clone());
        async move { QdrantVectorStore::connect(&options, &spec).await }
    });
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(!connecting.is_finished(), "with no server, the start waits");
    let _stop = StopQdrant(scripts.join("stop"), dir.path().to_path_buf());
    let started = std::process::Command::new(scripts.join("start"))
        .arg(dir.path())
        .env("QDRANT_GRPC_PORT", port.to_string())
        .env("QDRANT__SERVICE__API_KEY", "the-right-key")
        .output()
        .expect("../shared/qdrant/start runs");
    assert!(started.status.success(), "start: {}", String::from_utf8_lossy(&started.stderr));
    let store = connecting.await.unwrap().expect("the store connects once the server is up");
    assert_eq!(store.count().await.unwrap(), 0);
    drop(store);

    let mut wrong = options.clone();
    wrong.api_key = Some("a-wrong-key".into());
    let asked = std::time::Instant::now();
    let refused = QdrantVectorStore::connect(&wrong, &spec).await.err().expect("a wrong key is refused");
    assert!(refused.to_string().contains("refused"), "{refused}");
    assert!(asked.elapsed() < wrong.startup_wait / 4, "refused at once, not after the wait: {:?}", asked.elapsed());

    let client =
        qdrant_client::Qdrant::from_url(&url).api_key("the-right-key").skip_compatibility_check().build().unwrap();
    let collection = options.collection.clone().unwrap();
    let indexed = || async {
        let info = client.collection_info(&collection).await.unwrap().result.unwrap();
        info.payload_schema.keys().cloned().collect::<std::collections::BTreeSet<_>>()
    };
    let wanted: std::collections::BTreeSet<String> = spec.payload_indexes.keys().cloned().collect();
    assert_eq!(indexed().await, wanted, "the definition's payload indexes");
    let request = qdrant_client::qdrant::DeleteFieldIndexCollectionBuilder::new(&collection, "agent_id").wait(true);
    client.delete_field_index(request).await.unwrap();
    assert!(!indexed().await.contains("agent_id"));
    QdrantVectorStore::connect(&options, &spec).await.unwrap();
    crate::helpers::eventually(
        std::time::Duration::from_secs(30),
        "the next start makes the missing index",
        async || indexed().await == wanted,
    )
    .await;
}

/// Runs `stop DIR --clean` when dropped, so a failing assertion does not leave the server running.
struct StopQdrant(std::path::PathBuf, std::path::PathBuf);

impl Drop for StopQdrant {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.0).arg(&self.1).arg("--clean").status();
    }
}
