//! The Qdrant server as a backend that fails: cut off, or a black hole (it accepts connections and never
//! answers). Needs a Qdrant server (`QDRANT_URL`, gRPC); scripts/test starts one from ../shared/qdrant.

use std::sync::Arc;

use context_store::app::Core;
use context_store::metrics::Metrics;

use crate::helpers::{model, test_settings};
use crate::neo4j_outage::outage_drill;
use crate::relay::Relay;

async fn qdrant_outage(fail: fn(&Relay)) {
    let url = std::env::var("QDRANT_URL").expect("QDRANT_URL names a Qdrant server");
    let upstream = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let relay = Relay::start(upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.vector.backend = "qdrant".into();
    settings.vector.qdrant.url = format!("http://127.0.0.1:{}", relay.port);
    settings.vector.qdrant.collection = Some(format!("outage_{}", uuid::Uuid::now_v7().simple()));
    settings.vector.qdrant.timeout_ms = 1000;
    settings.vector.qdrant.breaker_threshold = 2;
    settings.vector.qdrant.breaker_cooldown_ms = 300;
    let metrics = Arc::new(Metrics::new());
    let graph = context_store::app::open_graph(&settings).await.unwrap();
    let vectors = context_store::app::open_vectors(&settings).await.unwrap();
    let core = Core::assemble(&settings, graph, vectors, model(), metrics).await.unwrap();
    outage_drill(&core, &relay, fail, "vectors", "qdrant").await;
    core.shutdown().await;
}

#[tokio::test]
#[ignore = "needs a Qdrant server: set QDRANT_URL (scripts/test starts one)"]
async fn qdrant_server_outage_fails_fast_and_recovers_without_a_restart() {
    qdrant_outage(Relay::cut).await;
}

#[tokio::test]
#[ignore = "needs a Qdrant server: set QDRANT_URL (scripts/test starts one)"]
async fn qdrant_server_black_hole_fails_fast_and_recovers_without_a_restart() {
    qdrant_outage(Relay::black_hole).await;
}
