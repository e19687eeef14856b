//! Wiring: builds the stores, the embedder and the service from settings, and runs background maintenance.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::embed::{CachedEmbedder, Embedder, FastEmbedder};
use crate::error::{StoreError, StoreResult};
use crate::metrics::Metrics;
use crate::service::ContextService;
use crate::store::graph::neo4j::Neo4jGraphStore;
use crate::store::graph::sqlite::{SqliteGraphStore, SqliteOptions};
use crate::store::vector::CollectionSpec;
use crate::store::vector::edge::EdgeVectorStore;
use crate::store::vector::qdrant::QdrantVectorStore;
use crate::store::{GraphStore, VectorStore};

/// The service with its background maintenance running.
pub struct Core {
    pub service: Arc<ContextService>,
    pub auth: Arc<crate::auth::Authenticator>,
    stop: CancellationToken,
    maintenance: tokio::task::JoinHandle<()>,
}

pub fn collection_spec(settings: &Settings) -> StoreResult<CollectionSpec> {
    match &settings.vector.collection_file {
        None => Ok(CollectionSpec::builtin()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| StoreError::Backend(format!("cannot read {}: {e}", path.display())))?;
            CollectionSpec::parse(&text).map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))
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
        "neo4j" => Ok(Arc::new(Neo4jGraphStore::connect(&settings.graph.neo4j.options()).await?)),
        other => Err(StoreError::Backend(format!("unknown graph backend '{other}' (sqlite or neo4j)"))),
    }
}

pub async fn open_vectors(settings: &Settings) -> StoreResult<Arc<dyn VectorStore>> {
    match settings.vector.backend.as_str() {
        "edge" => {
            let spec = collection_spec(settings)?;
            Ok(Arc::new(EdgeVectorStore::open(&settings.data_dir.join("vectors"), &spec).await?))
        }
        "qdrant" => {
            let spec = collection_spec(settings)?;
            Ok(Arc::new(QdrantVectorStore::connect(&settings.vector.qdrant.options(), &spec).await?))
        }
        other => Err(StoreError::Backend(format!("unknown vector backend '{other}' (edge or qdrant)"))),
    }
}

/// The vector store of agent state: the contexts' definition under the name `<name>_state`, beside the
/// contexts' collection (embedded: `state_vectors/` in the data dir).
pub async fn open_state_vectors(settings: &Settings) -> StoreResult<Arc<dyn VectorStore>> {
    let mut spec = collection_spec(settings)?;
    spec.name = format!("{}_state", spec.name);
    match settings.vector.backend.as_str() {
        "edge" => Ok(Arc::new(EdgeVectorStore::open(&settings.data_dir.join("state_vectors"), &spec).await?)),
        "qdrant" => {
            let mut options = settings.vector.qdrant.options();
            options.collection = options.collection.map(|name| format!("{name}_state"));
            Ok(Arc::new(QdrantVectorStore::connect(&options, &spec).await?))
        }
        other => Err(StoreError::Backend(format!("unknown vector backend '{other}' (edge or qdrant)"))),
    }
}

/// Removes both vector collections (contexts and agent state), so the next start makes them again from the
/// definition: `reindex --recreate` then fills them from the graph. The graph is left alone.
pub async fn drop_vector_collections(settings: &Settings) -> StoreResult<()> {
    match settings.vector.backend.as_str() {
        "edge" => {
            for dir in ["vectors", "state_vectors"] {
                let path = settings.data_dir.join(dir);
                // Taking the lock first refuses while a server has the store open.
                drop(EdgeVectorStore::lock(&path)?);
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(err) => return Err(StoreError::Backend(format!("remove {}: {err}", path.display()))),
                }
            }
            Ok(())
        }
        "qdrant" => {
            let spec = collection_spec(settings)?;
            let options = settings.vector.qdrant.options();
            QdrantVectorStore::drop_collection(&options, &spec).await?;
            let mut state_spec = spec.clone();
            state_spec.name = format!("{}_state", spec.name);
            let mut state_options = options.clone();
            state_options.collection = options.collection.map(|name| format!("{name}_state"));
            QdrantVectorStore::drop_collection(&state_options, &state_spec).await
        }
        other => Err(StoreError::Backend(format!("unknown vector backend '{other}' (edge or qdrant)"))),
    }
}

/// The API keys of a graph store: in the graph when it is shared by replicas (Neo4j), else in the data dir.
pub fn key_store(settings: &Settings, graph: &dyn GraphStore) -> StoreResult<crate::auth::KeyStore> {
    match graph.shared_keys() {
        Some(backend) => Ok(crate::auth::KeyStore::new(backend)),
        None => crate::auth::KeyStore::sqlite(&settings.data_dir),
    }
}

/// The API keys the settings point at, for commands that do not open the whole service (`keys`, `doctor`,
/// `bench`): connects to Neo4j when the graph is there.
pub async fn open_key_store(settings: &Settings) -> StoreResult<crate::auth::KeyStore> {
    match settings.graph.backend.as_str() {
        "sqlite" => crate::auth::KeyStore::sqlite(&settings.data_dir),
        _ => key_store(settings, open_graph(settings).await?.as_ref()),
    }
}

pub fn open_embedder(settings: &Settings, metrics: Arc<Metrics>) -> StoreResult<Arc<dyn Embedder>> {
    let assets = settings.model_assets();
    let model = FastEmbedder::start(&assets, settings.batcher_options(), metrics.clone())?;
    Ok(Arc::new(CachedEmbedder::new(Arc::new(model), settings.embedding.cache_entries, metrics)))
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
        let state_vectors = open_state_vectors(settings).await?;
        Self::assemble_with_state(settings, graph, vectors, state_vectors, embedder, metrics).await
    }

    /// Like `assemble`, with a given agent-state vector store.
    pub async fn assemble_with_state(
        settings: &Settings,
        graph: Arc<dyn GraphStore>,
        vectors: Arc<dyn VectorStore>,
        state_vectors: Arc<dyn VectorStore>,
        embedder: Arc<dyn Embedder>,
        metrics: Arc<Metrics>,
    ) -> StoreResult<Self> {
        let keys = key_store(settings, graph.as_ref())?;
        let auth = Arc::new(
            crate::auth::Authenticator::open(&settings.auth_settings(), keys)
                .map_err(|e| StoreError::Backend(format!("authentication store: {e}")))?,
        );
        let service = Arc::new(ContextService::new(
            graph,
            vectors,
            state_vectors,
            embedder,
            metrics,
            settings.service_options(),
        )?);
        let repaired = service.repair_pending().await.map_err(|e| StoreError::Backend(e.to_string()))?;
        if repaired > 0 {
            tracing::info!(repaired, "re-indexed journaled items left by an unclean stop");
        }
        let _ = service.refresh_item_metrics().await;
        let stop = CancellationToken::new();
        let maintenance = {
            let service = service.clone();
            let stop = stop.clone();
            let options = settings.maintenance_options();
            tokio::spawn(async move { service.run_maintenance(options, stop).await })
        };
        Ok(Self { service, auth, stop, maintenance })
    }

    /// Stops maintenance after a final flush.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.maintenance.await;
    }
}

/// The HTTP server: binds its own listener (port 0 works), serves until the shutdown future resolves,
/// then drains requests and flushes the stores.
pub struct App {
    core: Core,
    listener: tokio::net::TcpListener,
    settings: Settings,
}

/// Without authentication only loopback addresses may be bound.
fn check_bind_address(host: &str, auth_enabled: bool) -> anyhow::Result<()> {
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback || auth_enabled {
        Ok(())
    } else {
        anyhow::bail!(
            "refusing to bind {host} with auth.enabled = false: without authentication the server only listens \
             on loopback (127.0.0.1, ::1)"
        )
    }
}

/// Shows the first-start admin key once: on a terminal it is printed; otherwise (a service manager, a pipe,
/// a log collector) it goes to an owner-only file in the data dir, and only that file's path is logged, so
/// the key never lands in service logs.
fn hand_over_admin_key(key: &str, data_dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprintln!(
            "\nNo API key existed, so an admin key was created. It is shown only now; keep it safe:\n\n    {key}\n\n\
             Create agent keys with `context-store keys create`.\n"
        );
        return Ok(());
    }
    let path = data_dir.join(ADMIN_KEY_FILE);
    crate::private_files::write_private(&path, format!("{key}\n").as_bytes())?;
    tracing::warn!(
        path = %path.display(),
        "no API key existed, so an admin key was created and written to this owner-only file (stderr is not a \
         terminal, so it is not printed): read it, keep it safe, then delete the file"
    );
    Ok(())
}

/// Where the first-start admin key goes when stderr is not a terminal.
pub const ADMIN_KEY_FILE: &str = "admin.key";

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        check_bind_address(&settings.server.host, settings.auth.enabled)?;
        let core = Core::start(&settings).await?;
        Self::build_with(settings, core).await
    }

    /// Serves an already started core.
    pub async fn build_with(settings: Settings, core: Core) -> anyhow::Result<Self> {
        check_bind_address(&settings.server.host, settings.auth.enabled)?;
        if settings.auth.enabled
            && let Some(key) = core.auth.ensure_admin_key().await.map_err(|e| anyhow::anyhow!(e.to_string()))?
            && let Err(err) = hand_over_admin_key(&key, &settings.data_dir)
        {
            // A key nobody can see must not stay valid: revoke it, so the next start makes another.
            if let Some(key_id) = key.strip_prefix("cs_").and_then(|rest| rest.split('_').next()) {
                let _ = core.auth.revoke(key_id).await;
            }
            return Err(err.context("handing over the first admin key"));
        }
        let listener = tokio::net::TcpListener::bind((settings.server.host.as_str(), settings.server.port)).await?;
        core.service.prepare_search();
        Ok(Self { core, listener, settings })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    pub fn service(&self) -> Arc<ContextService> {
        self.core.service.clone()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self { core, listener, settings } = self;
        let stop = CancellationToken::new();
        let state = crate::http::HttpState::new(core.service.clone(), core.auth.clone(), &settings);
        let router = crate::http::router(state, &settings.server, stop.clone());
        let listener = crate::http::CountingListener {
            inner: listener,
            gauge: core.service.metrics().active_connections.clone(),
            refused: core.service.metrics().connections_refused.clone(),
        };
        let graceful = {
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        };
        let limits = crate::http::ConnectionLimits {
            idle_timeout: std::time::Duration::from_millis(settings.server.header_read_timeout_ms.max(1)),
            max_connections: crate::http::fit_open_files(settings.server.max_connections.max(1)),
            shutdown_grace: std::time::Duration::from_millis(
                settings.server.request_timeout_ms.max(settings.server.header_read_timeout_ms),
            ),
        };
        crate::http::serve(listener, router, limits, graceful).await;
        core.shutdown().await;
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: draining requests and flushing stores");
}

#[cfg(test)]
mod tests {
    use super::check_bind_address;

    #[test]
    fn only_loopback_addresses_may_be_bound_without_authentication() {
        assert!(check_bind_address("127.0.0.1", false).is_ok());
        assert!(check_bind_address("::1", false).is_ok());
        assert!(check_bind_address("localhost", false).is_ok());
        assert!(check_bind_address("0.0.0.0", false).is_err());
        assert!(check_bind_address("192.168.1.5", false).is_err());
        assert!(check_bind_address("0.0.0.0", true).is_ok(), "with authentication any address may be bound");
    }
}
