//! Test helpers: a service on real embedded stores in a fresh temp dir, the real embedding model shared
//! by all tests of this binary, failure-injecting wrappers around the real stores, and a seeded generator
//! of varied sentences.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use context_store::app::Core;
use context_store::auth::Principal;
use context_store::config::Settings;
use context_store::domain::{Context, ContextFilter};
use context_store::embed::{CachedEmbedder, Embedder, FastEmbedder};
use context_store::error::{StoreError, StoreResult};
use context_store::metrics::Metrics;
use context_store::service::{ContextService, CreateSessionRequest, StoreContextRequest, StoreContextResponse};
use context_store::store::{VectorHit, VectorPoint, VectorStore};
use uuid::Uuid;

pub fn assets_dir() -> PathBuf {
    std::env::var_os("CTX__EMBEDDING__ASSETS_DIR").map(PathBuf::from).unwrap_or_else(|| checkout().join("assets"))
}

/// The checkout the tests run from. Cargo sets `CARGO_MANIFEST_DIR` when it runs a test too, and that is
/// preferred to the path compiled in: cargo may reuse a test binary built in another clone that shares the
/// target directory, whose compiled-in path points at that other clone's assets.
pub fn checkout() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

/// The Qdrant server scripts of `../shared/qdrant` beside the checkout (start, stop, start-cluster).
pub fn qdrant_scripts() -> PathBuf {
    checkout().join("../shared/qdrant")
}

/// The real model, loaded once for the whole test binary.
pub fn model() -> Arc<dyn Embedder> {
    static MODEL: OnceLock<Arc<FastEmbedder>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let settings = test_settings(Path::new("/nonexistent"));
            let model =
                FastEmbedder::start(&settings.model_assets(), settings.batcher_options(), Arc::new(Metrics::new()))
                    .expect("embedding assets are installed: run scripts/setup");
            Arc::new(model)
        })
        .clone()
}

pub fn test_settings(data_dir: &Path) -> Settings {
    let mut settings = Settings { data_dir: data_dir.to_path_buf(), ..Default::default() };
    settings.embedding.assets_dir = assets_dir();
    settings.graph.synchronous = context_store::store::graph::sqlite::Synchronous::Normal;
    settings.vector.flush_interval_ms = 200;
    // Failed authentications are limited per address; the tests all come from 127.0.0.1.
    settings.server.auth_failures_per_second = 1_000_000;
    settings.server.auth_failure_burst = 1_000_000;
    settings
}

/// An embedder whose failure can be switched on: wraps the real model.
pub struct SwitchableEmbedder {
    pub inner: Arc<dyn Embedder>,
    pub failing: AtomicBool,
}

#[async_trait]
impl Embedder for SwitchableEmbedder {
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }
    async fn embed(&self, texts: Vec<String>) -> StoreResult<Vec<Vec<f32>>> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("embedder switched off by the test".into()));
        }
        self.inner.embed(texts).await
    }
}

/// A vector store whose writes can be made to fail: wraps the real qdrant-edge store.
pub struct SwitchableVectors {
    pub inner: Arc<dyn VectorStore>,
    pub failing_writes: AtomicBool,
    /// Milliseconds every upsert waits before it runs (a slow vector store, to cancel writes mid-way).
    pub write_delay_ms: std::sync::atomic::AtomicU64,
    /// Makes the lexical stage's query fail (a backend error mid-search).
    pub failing_lexical: AtomicBool,
}

impl SwitchableVectors {
    pub fn new(inner: Arc<dyn VectorStore>) -> Self {
        Self {
            inner,
            failing_writes: AtomicBool::new(false),
            write_delay_ms: Default::default(),
            failing_lexical: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl VectorStore for SwitchableVectors {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn upsert(&self, points: Vec<VectorPoint>) -> StoreResult<()> {
        let delay = self.write_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        if self.failing_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("vector writes switched off by the test".into()));
        }
        self.inner.upsert(points).await
    }
    async fn delete(&self, ids: &[Uuid]) -> StoreResult<()> {
        if self.failing_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("vector writes switched off by the test".into()));
        }
        self.inner.delete(ids).await
    }
    async fn search(&self, v: Vec<f32>, f: &ContextFilter, l: usize, e: bool) -> StoreResult<Vec<VectorHit>> {
        self.inner.search(v, f, l, e).await
    }
    async fn lexical_search(
        &self,
        query: &str,
        filter: &ContextFilter,
        limit: usize,
        with_dense: bool,
    ) -> StoreResult<Option<Vec<context_store::store::vector::LexicalHit>>> {
        if self.failing_lexical.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("lexical query switched off by the test".into()));
        }
        self.inner.lexical_search(query, filter, limit, with_dense).await
    }
    async fn scroll(&self, filter: &ContextFilter, limit: usize) -> StoreResult<Vec<Context>> {
        self.inner.scroll(filter, limit).await
    }
    async fn existing_ids(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        self.inner.existing_ids(ids).await
    }
    async fn count(&self) -> StoreResult<u64> {
        self.inner.count().await
    }
    async fn indexed(&self) -> StoreResult<u64> {
        self.inner.indexed().await
    }
    async fn flush(&self) -> StoreResult<()> {
        self.inner.flush().await
    }
    async fn optimize(&self) -> StoreResult<bool> {
        self.inner.optimize().await
    }
}

/// The Neo4j server the test scripts started (`CTX_TEST_NEO4J_URI`, e.g. bolt://127.0.0.1:7687).
pub fn neo4j_uri() -> String {
    std::env::var("CTX_TEST_NEO4J_URI")
        .expect("this test needs Neo4j: run it through scripts/test, which starts one and sets CTX_TEST_NEO4J_URI")
}

/// Graph settings for the test Neo4j.
pub fn neo4j_settings(settings: &mut Settings) {
    settings.graph.backend = "neo4j".into();
    settings.graph.neo4j.uri = neo4j_uri();
    settings.graph.neo4j.max_connections = 16;
    // Test machines are shared and a fresh JVM is slow to open its first connections: wider than production.
    settings.graph.neo4j.connect_timeout_ms = 15_000;
    settings.graph.neo4j.acquire_timeout_ms = 15_000;
}

/// Exclusive use of the test Neo4j, emptied first: the tests that use it run one at a time.
pub async fn neo4j_exclusive() -> tokio::sync::OwnedMutexGuard<()> {
    static LOCK: OnceLock<Arc<tokio::sync::Mutex<()>>> = OnceLock::new();
    let guard = LOCK.get_or_init(Default::default).clone().lock_owned().await;
    let graph = neo4rs::Graph::new(neo4j_uri(), "neo4j", "").expect("neo4j driver");
    graph.run(neo4rs::query("MATCH (n) DETACH DELETE n")).await.expect("test Neo4j emptied");
    guard
}

/// Which graph store the service-level tests use: `CTX_TEST_GRAPH=neo4j` runs them on the test Neo4j
/// (scripts/test does a second pass that way), anything else on SQLite.
pub fn graph_under_test() -> &'static str {
    match std::env::var("CTX_TEST_GRAPH").as_deref() {
        Ok("neo4j") => "neo4j",
        _ => "sqlite",
    }
}

/// Which vector store the service-level tests use: `CTX_TEST_VECTOR=qdrant` runs them on the Qdrant server
/// `QDRANT_URL` names (scripts/test does passes that way), anything else on qdrant-edge.
pub fn vectors_under_test() -> &'static str {
    match std::env::var("CTX_TEST_VECTOR").as_deref() {
        Ok("qdrant") => "qdrant",
        _ => "edge",
    }
}

/// The Qdrant collection of the tests that keep their data in `data_dir`: one per data dir, so a restart
/// (or a child process on the same dir) finds the same collection.
pub fn collection_for(data_dir: &Path) -> String {
    let name: String = data_dir.to_string_lossy().chars().filter(char::is_ascii_alphanumeric).collect();
    format!("test_{name}")
}

/// Vector settings for the test Qdrant server, with the collection of `data_dir`.
pub fn qdrant_settings(settings: &mut Settings, data_dir: &Path) {
    settings.vector.backend = "qdrant".into();
    settings.vector.qdrant.url = std::env::var("QDRANT_URL")
        .expect("CTX_TEST_VECTOR=qdrant needs QDRANT_URL (scripts/test starts a server from ../shared/qdrant)");
    settings.vector.qdrant.collection = Some(collection_for(data_dir));
}

/// A service on real stores (SQLite or Neo4j, see `graph_under_test`; qdrant-edge or a Qdrant server, see
/// `vectors_under_test`) in its own temp dir.
pub struct TestCore {
    pub core: Option<Core>,
    pub embedder: Arc<SwitchableEmbedder>,
    pub vectors: Arc<SwitchableVectors>,
    pub state_vectors: Arc<SwitchableVectors>,
    pub principal: Principal,
    neo4j: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// Last: fields drop in order, and the stores must close before their folder goes.
    pub dir: tempfile::TempDir,
}

/// A test that ends without `shutdown` leaves the maintenance task and a blocking flush possibly running
/// while the runtime winds down; qdrant-edge panics (and aborts the test binary) when its folder vanishes
/// under a flush. So the folder goes a few seconds later, on a thread of its own.
impl Drop for TestCore {
    fn drop(&mut self) {
        if self.core.is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(5));
                drop(dir);
            });
        }
    }
}

impl TestCore {
    pub async fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir")).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        let neo4j = match graph_under_test() {
            "neo4j" => Some(neo4j_exclusive().await),
            _ => None,
        };
        Self::open(dir, neo4j).await
    }

    /// Opens the stores as they are (no emptying): `neo4j` is the exclusive use of the test Neo4j, if used.
    pub async fn open(dir: tempfile::TempDir, neo4j: Option<tokio::sync::OwnedMutexGuard<()>>) -> Self {
        let mut settings = test_settings(dir.path());
        if neo4j.is_some() {
            neo4j_settings(&mut settings);
        }
        if vectors_under_test() == "qdrant" {
            qdrant_settings(&mut settings, dir.path());
        }
        let metrics = Arc::new(Metrics::new());
        let embedder = Arc::new(SwitchableEmbedder {
            inner: Arc::new(CachedEmbedder::new(model(), 10_000, metrics.clone())),
            failing: AtomicBool::new(false),
        });
        let graph = context_store::app::open_graph(&settings).await.expect("graph opens");
        let vectors =
            Arc::new(SwitchableVectors::new(context_store::app::open_vectors(&settings).await.expect("vectors open")));
        let state_vectors = Arc::new(SwitchableVectors::new(
            context_store::app::open_state_vectors(&settings).await.expect("state vectors open"),
        ));
        let core = Core::assemble_with_state(
            &settings,
            graph,
            vectors.clone(),
            state_vectors.clone(),
            embedder.clone(),
            metrics,
        )
        .await
        .expect("core starts");
        assert_eq!(core.service.graph().backend(), graph_under_test(), "the graph store under test");
        let vectors_backend = if vectors_under_test() == "qdrant" { "qdrant" } else { "qdrant-edge" };
        assert_eq!(core.service.vectors().backend(), vectors_backend, "the vector store under test");
        Self {
            core: Some(core),
            dir,
            embedder,
            vectors,
            state_vectors,
            principal: Principal::local_trusted("tester"),
            neo4j,
        }
    }

    pub fn service(&self) -> &Arc<ContextService> {
        &self.core.as_ref().expect("running").service
    }

    /// Stops cleanly and starts again on the same data dir.
    pub async fn restart(mut self) -> Self {
        self.core.take().expect("running").shutdown().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let neo4j = self.neo4j.take();
        drop(self);
        Self::open(dir, neo4j).await
    }

    pub async fn session(&self, id: &str) {
        self.service()
            .create_session(
                &self.principal,
                CreateSessionRequest { id: Some(id.into()), purpose: format!("test {id}"), ..Default::default() },
            )
            .await
            .expect("session created");
    }

    /// get_context with its previous versions, as the default principal.
    pub async fn get(
        &self,
        id: impl ToString,
    ) -> context_store::error::ServiceResult<context_store::service::GetContextResponse> {
        let request = context_store::service::GetContextRequest {
            id: id.to_string(),
            include_versions: true,
            versions_limit: None,
            versions_before: None,
            agent_id: None,
        };
        self.service().get_context(&self.principal, request).await
    }

    pub async fn store(&self, session: &str, agent: &str, content: &str) -> StoreContextResponse {
        self.service()
            .store_context(
                &self.principal,
                StoreContextRequest {
                    session_id: session.into(),
                    content: content.into(),
                    agent_id: Some(agent.into()),
                    ..Default::default()
                },
            )
            .await
            .expect("stored")
    }
}

pub use context_store::bench::Sentences;

/// A new public context (version 1, no tags or metadata), built directly for store-level tests.
pub fn public_context(text: &str, session: &str, agent: &str) -> Context {
    let now = context_store::domain::Timestamp::now();
    Context {
        id: Uuid::now_v7(),
        session_id: session.into(),
        agent_id: agent.into(),
        context_type: "note".into(),
        content_hash: context_store::domain::content_hash(text),
        content: text.into(),
        tags: vec![],
        metadata: Default::default(),
        visibility: context_store::domain::Visibility::Public,
        created_at: now,
        updated_at: now,
        version: 1,
        expires_at: None,
    }
}

/// The HTTP server on port 0 over real embedded stores, stopped when dropped.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    /// The default caller: agent "tester" with read, write and query, all sessions.
    pub key: String,
    /// An admin key.
    pub admin_key: String,
    pub auth: Arc<context_store::auth::Authenticator>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: Option<tempfile::TempDir>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like `spawn_app`, with settings adjusted first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(dir.path());
    settings.server.port = 0;
    adjust(&mut settings);
    let metrics = Arc::new(Metrics::new());
    let embedder: Arc<dyn Embedder> = Arc::new(CachedEmbedder::new(model(), 10_000, metrics.clone()));
    let core = Core::start_with(&settings, embedder, metrics).await.expect("core starts");
    let auth = core.auth.clone();
    let key = create_key(&auth, "tester", "read,write,query", None).await;
    let admin_key = create_key(&auth, "root", "read,write,query,admin", None).await;
    let app = context_store::app::App::build_with(settings, core).await.expect("app binds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        http: reqwest::Client::new(),
        key,
        admin_key,
        auth,
        stop: Some(stop),
        server: Some(server),
        dir: Some(dir),
    }
}

/// Creates an API key and returns it.
pub async fn create_key(
    auth: &context_store::auth::Authenticator,
    agent: &str,
    permissions: &str,
    sessions: Option<Vec<String>>,
) -> String {
    let new = context_store::auth::NewKey {
        agent_id: agent.into(),
        agent_type: "test".into(),
        permissions: context_store::auth::Permissions::parse(permissions).unwrap(),
        sessions,
    };
    auth.keys().create(&new).await.expect("key created").1
}

impl TestApp {
    /// `POST /mcp/tool/{name}` as the default caller: (status, JSON body).
    pub async fn call_tool(&self, name: &str, arguments: serde_json::Value) -> (u16, serde_json::Value) {
        self.call_tool_as(Some(&self.key), name, arguments).await
    }

    /// `POST /mcp/tool/{name}` with this bearer credential (or none): (status, JSON body).
    pub async fn call_tool_as(
        &self,
        bearer: Option<&str>,
        name: &str,
        arguments: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let mut request = self.http.post(format!("{}/mcp/tool/{name}", self.address)).json(&arguments);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }
}

impl TestApp {
    /// Graceful shutdown (drain, final flush), then the data dir is removed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server stopped cleanly");
        }
        self.dir.take();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // A test that failed before `stop`: keep the data dir, the server may still be using it.
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
    }
}

/// The real `context-store serve` binary as a child process on a free port, killed (SIGKILL) when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub base: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts the server on `dir` (rate limits off unless `env` sets them) and waits until it is ready;
    /// returns it with the time from spawn to ready.
    pub async fn start(dir: &Path, env: &[(&str, &str)]) -> (Self, std::time::Duration) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let started = std::time::Instant::now();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_context-store"));
        command
            .arg("serve")
            .env("CTX__DATA_DIR", dir)
            .env("CTX__SERVER__PORT", port.to_string())
            .env("CTX__EMBEDDING__ASSETS_DIR", assets_dir())
            .env("CTX__SERVER__RATE_LIMIT_PER_SECOND", "1000000")
            .env("CTX__SERVER__RATE_LIMIT_BURST", "1000000")
            .env("CTX__SERVER__MAX_CONCURRENCY", "1024")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut server =
            Self { child: command.spawn().expect("server starts"), base: format!("http://127.0.0.1:{port}") };
        let probe = reqwest::Client::new();
        loop {
            // Its stderr (inherited) says why.
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the server exited before it was ready ({status}); its error is printed above");
            }
            if let Ok(response) = probe.get(format!("{}/health/ready", server.base)).send().await
                && response.status().is_success()
            {
                return (server, started.elapsed());
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(180), "the server did not become ready");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Peak resident memory of the server so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

/// Creates an admin API key in the key store of `dir` (before a server starts on it) and returns it.
pub async fn admin_key_in(dir: &Path) -> String {
    let keys = context_store::auth::KeyStore::sqlite(dir).expect("key store opens");
    let new = context_store::auth::NewKey {
        agent_id: "test-admin".into(),
        agent_type: "test".into(),
        permissions: context_store::auth::Permissions::all(),
        sessions: None,
    };
    keys.create(&new).await.expect("key created").1
}

/// Polls `check` until it holds, failing the test if it does not within `limit` (a hang check for work that
/// finishes in the background, not a speed claim).
pub async fn eventually(limit: std::time::Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
