//! Wiring: builds the stores, the embedder and the service from settings, and runs background maintenance.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::embed::fastembed::ModelAssets;
use crate::embed::{CachedEmbedder, Embedder, FastEmbedder};
use crate::error::{StoreError, StoreResult};
use crate::metrics::Metrics;
use crate::service::ContextService;
use crate::store::graph::sqlite::{SqliteGraphStore, SqliteOptions};
use crate::store::vector::CollectionSpec;
use crate::store::vector::edge::EdgeVectorStore;
use crate::store::{GraphStore, VectorStore};

/// The service with its background maintenance running.
pub struct Core {
    pub service: Arc<ContextService>,
    stop: CancellationToken,
    maintenance: tokio::task::JoinHandle<()>,
}

pub fn collection_spec(settings: &Settings) -> StoreResult<CollectionSpec> {
    match &settings.vector.collection_file {
        None => Ok(CollectionSpec::builtin()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| StoreError::Backend(format!("cannot read {}: {e}", path.display())))?;
            CollectionSpec::parse(&text)
                .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))
        }
    }
}

pub async fn open_graph(settings: &Settings) -> StoreResult<Arc<dyn GraphStore>> {
    match settings.graph.backend.as_str() {
        "sqlite" => Ok(Arc::new(SqliteGraphStore::open(&SqliteOptions {
            path: SqliteGraphStore::path_in(&settings.data_dir),
            readers: settings.graph.readers,
            synchronous: settings.graph.synchronous,
        })?)),
        other => Err(StoreError::Backend(format!(
            "unknown graph backend '{other}'"
        ))),
    }
}

pub async fn open_vectors(settings: &Settings) -> StoreResult<Arc<dyn VectorStore>> {
    match settings.vector.backend.as_str() {
        "edge" => {
            let spec = collection_spec(settings)?;
            Ok(Arc::new(
                EdgeVectorStore::open(&settings.data_dir.join("vectors"), &spec).await?,
            ))
        }
        other => Err(StoreError::Backend(format!(
            "unknown vector backend '{other}'"
        ))),
    }
}

pub fn open_embedder(settings: &Settings, metrics: Arc<Metrics>) -> StoreResult<Arc<dyn Embedder>> {
    let assets = ModelAssets::in_dir(&settings.embedding.assets_dir);
    let model = FastEmbedder::start(&assets, settings.batcher_options(), metrics.clone())?;
    Ok(Arc::new(CachedEmbedder::new(
        Arc::new(model),
        settings.embedding.cache_entries,
        metrics,
    )))
}

impl Core {
    /// Opens everything, repairs pending index entries, and starts maintenance.
    pub async fn start(settings: &Settings) -> StoreResult<Self> {
        let metrics = Arc::new(Metrics::new());
        let embedder = open_embedder(settings, metrics.clone())?;
        Self::start_with(settings, embedder, metrics).await
    }

    /// Like `start`, with a given embedder (tests inject failures through it).
    pub async fn start_with(
        settings: &Settings,
        embedder: Arc<dyn Embedder>,
        metrics: Arc<Metrics>,
    ) -> StoreResult<Self> {
        let graph = open_graph(settings).await?;
        let vectors = open_vectors(settings).await?;
        Self::assemble(settings, graph, vectors, embedder, metrics).await
    }

    pub async fn assemble(
        settings: &Settings,
        graph: Arc<dyn GraphStore>,
        vectors: Arc<dyn VectorStore>,
        embedder: Arc<dyn Embedder>,
        metrics: Arc<Metrics>,
    ) -> StoreResult<Self> {
        let service = Arc::new(ContextService::new(
            graph,
            vectors,
            embedder,
            metrics,
            settings.service_options(),
        ));
        let repaired = service
            .repair_pending()
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        if repaired > 0 {
            tracing::info!(
                repaired,
                "re-indexed journaled items left by an unclean stop"
            );
        }
        let _ = service.refresh_item_metrics().await;
        let stop = CancellationToken::new();
        let maintenance = {
            let service = service.clone();
            let stop = stop.clone();
            let options = settings.maintenance_options();
            tokio::spawn(async move { service.run_maintenance(options, stop).await })
        };
        Ok(Self {
            service,
            stop,
            maintenance,
        })
    }

    /// Stops maintenance after a final flush.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.maintenance.await;
    }
}
