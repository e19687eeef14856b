//! Vector-stage recall of the HNSW index against exact search, on real embeddings.

use crate::helpers::{Sentences, model, public_context};
use context_store::domain::{ContextFilter, ContextFilterArgs, ReadScope, Timestamp};
use context_store::store::vector::CollectionSpec;
use context_store::store::vector::edge::EdgeVectorStore;
use context_store::store::{VectorPoint, VectorStore};

const N_CONTEXTS: usize = 3000;
const N_QUERIES: usize = 100;

#[tokio::test]
async fn hnsw_recall_at_10_is_at_least_0_95_against_exact_search() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = CollectionSpec::builtin();
    // Small thresholds so the index is really built and really used at this size.
    spec.optimizers_config.indexing_threshold_kb = 100;
    spec.hnsw_config.full_scan_threshold_kb = 10;
    let store = EdgeVectorStore::open(dir.path(), &spec).await.unwrap();

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
    for chunk in points.chunks(500) {
        store.upsert(chunk.to_vec()).await.unwrap();
    }
    assert!(store.optimize().await.unwrap(), "the optimizer built an index");
    assert!(store.indexed_vectors() >= N_CONTEXTS / 2, "HNSW covers the points: {}", store.indexed_vectors());

    let scope = ReadScope { agent_id: "reader".into(), admin: false, sessions: None };
    let mut queries = Sentences::new(99);
    let mut found = 0usize;
    let mut expected = 0usize;
    for i in 0..N_QUERIES {
        let query = model().embed(vec![queries.next_sentence()]).await.unwrap().remove(0);
        // Half the queries carry a payload filter, as searches do.
        let args = if i % 2 == 0 {
            ContextFilterArgs::default()
        } else {
            ContextFilterArgs { session_id: Some("odd".into()), ..Default::default() }
        };
        let filter = ContextFilter::parse(args, scope.clone(), Timestamp::now()).unwrap();
        let exact = store.search(query.clone(), &filter, 10, true).await.unwrap();
        let approximate = store.search(query, &filter, 10, false).await.unwrap();
        expected += exact.len();
        found += exact.iter().filter(|e| approximate.iter().any(|a| a.context.id == e.context.id)).count();
    }
    let recall = found as f64 / expected as f64;
    println!("recall@10 = {recall:.4} over {N_QUERIES} queries and {N_CONTEXTS} contexts");
    assert!(recall >= 0.95, "recall@10 = {recall}");
}
