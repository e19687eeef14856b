//! Vector-stage recall of the HNSW index against exact search, on real embeddings.

use crate::helpers::{Sentences, model, public_context};
use context_store::domain::{ContextFilter, ContextFilterArgs, ReadScope, Timestamp};
use context_store::store::vector::CollectionSpec;
use context_store::store::vector::edge::EdgeVectorStore;
use context_store::store::vector::search_filled;
use context_store::store::{VectorHit, VectorPoint, VectorStore};

const N_CONTEXTS: usize = 3000;
const N_QUERIES: usize = 100;
/// Qdrant draws HNSW levels from an unseeded generator and links points on several threads, so each build
/// is a different graph. Recall is measured over several builds of the same points: one unlucky graph
/// should not decide the result, and a real regression lowers every build.
const N_BUILDS: usize = 3;

#[tokio::test]
async fn hnsw_recall_at_10_is_at_least_0_95_against_exact_search() {
    let mut sentences = Sentences::new(7);
    let texts: Vec<String> = (0..N_CONTEXTS).map(|_| sentences.next_sentence()).collect();
    let mut points = Vec::with_capacity(N_CONTEXTS);
    for chunk in texts.chunks(64) {
        let vectors = model().embed(chunk.to_vec()).await.unwrap();
        for (text, vector) in chunk.iter().zip(vectors) {
            let session = if points.len() % 2 == 0 { "even" } else { "odd" };
            points.push(VectorPoint { context: public_context(text, session, "writer"), vector });
        }
    }
    let mut queries = Sentences::new(99);
    let query_texts: Vec<String> = (0..N_QUERIES).map(|_| queries.next_sentence()).collect();
    let query_vectors = model().embed(query_texts).await.unwrap();

    let mut found = 0usize;
    let mut expected = 0usize;
    for build in 0..N_BUILDS {
        let (build_found, build_expected) = measure_one_build(&points, &query_vectors).await;
        println!("build {build}: recall@10 = {:.4}", build_found as f64 / build_expected as f64);
        found += build_found;
        expected += build_expected;
    }
    let recall = found as f64 / expected as f64;
    println!("recall@10 = {recall:.4} over {N_BUILDS} builds, {N_QUERIES} queries and {N_CONTEXTS} contexts");
    assert!(recall >= 0.95, "recall@10 = {recall}");
}

/// Builds a fresh index of `points` and returns (exact neighbours the HNSW search found, exact neighbours).
async fn measure_one_build(points: &[VectorPoint], query_vectors: &[Vec<f32>]) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = CollectionSpec::builtin();
    // Small thresholds so the index is really built and really used at this size.
    spec.optimizers_config.indexing_threshold_kb = 100;
    spec.hnsw_config.full_scan_threshold_kb = 10;
    let store = EdgeVectorStore::open(dir.path(), &spec).await.unwrap();
    for chunk in points.chunks(500) {
        store.upsert(chunk.to_vec()).await.unwrap();
    }
    assert!(store.optimize().await.unwrap(), "the optimizer built an index");
    assert!(store.indexed_vectors() >= N_CONTEXTS / 2, "HNSW covers the points: {}", store.indexed_vectors());

    let scope = ReadScope { agent_id: "reader".into(), admin: false, sessions: None };
    let mut found = 0usize;
    let mut expected = 0usize;
    for (i, query) in query_vectors.iter().enumerate() {
        // Half the queries carry a payload filter, as searches do.
        let args = if i % 2 == 0 {
            ContextFilterArgs::default()
        } else {
            ContextFilterArgs { session_id: Some("odd".into()), ..Default::default() }
        };
        let filter = ContextFilter::parse(args, scope.clone(), Timestamp::now()).unwrap();
        let exact = store.search(query.clone(), &filter, 10, true).await.unwrap();
        let approximate = store.search(query.clone(), &filter, 10, false).await.unwrap();
        // What the search service uses: an index search that comes back short is run again exactly, so a
        // page is never short while enough points match (1 hit of 1 500 matching happens without it).
        let (filled, _) = search_filled(&store, query.clone(), &filter, 10).await.unwrap();
        let ids = |hits: &[VectorHit]| hits.iter().map(|h| h.context.id).collect::<Vec<_>>();
        let expected_page = if approximate.len() == 10 { &approximate } else { &exact };
        assert_eq!(ids(&filled), ids(expected_page), "query {i}: {} index hits", approximate.len());
        expected += exact.len();
        found += exact.iter().filter(|e| approximate.iter().any(|a| a.context.id == e.context.id)).count();
    }
    (found, expected)
}
