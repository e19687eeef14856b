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
use context_store::embed::fastembed::ModelAssets;
use context_store::embed::{CachedEmbedder, Embedder, FastEmbedder};
use context_store::error::{StoreError, StoreResult};
use context_store::metrics::Metrics;
use context_store::service::{
    ContextService, CreateSessionRequest, StoreContextRequest, StoreContextResponse,
};
use context_store::store::{VectorHit, VectorPoint, VectorStore};
use uuid::Uuid;

pub fn assets_dir() -> PathBuf {
    std::env::var_os("CTX__EMBEDDING__ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

/// The real model, loaded once for the whole test binary.
pub fn model() -> Arc<dyn Embedder> {
    static MODEL: OnceLock<Arc<FastEmbedder>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let settings = test_settings(Path::new("/nonexistent"));
            let model = FastEmbedder::start(
                &ModelAssets::in_dir(&settings.embedding.assets_dir),
                settings.batcher_options(),
                Arc::new(Metrics::new()),
            )
            .expect("embedding assets are installed: run scripts/setup");
            Arc::new(model)
        })
        .clone()
}

pub fn test_settings(data_dir: &Path) -> Settings {
    let mut settings = Settings {
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    settings.embedding.assets_dir = assets_dir();
    settings.graph.synchronous = context_store::store::graph::sqlite::Synchronous::Normal;
    settings.vector.flush_interval_ms = 200;
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
            return Err(StoreError::Unavailable(
                "embedder switched off by the test".into(),
            ));
        }
        self.inner.embed(texts).await
    }
}

/// A vector store whose writes can be made to fail: wraps the real qdrant-edge store.
pub struct SwitchableVectors {
    pub inner: Arc<dyn VectorStore>,
    pub failing_writes: AtomicBool,
}

#[async_trait]
impl VectorStore for SwitchableVectors {
    async fn upsert(&self, points: Vec<VectorPoint>) -> StoreResult<()> {
        if self.failing_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "vector writes switched off by the test".into(),
            ));
        }
        self.inner.upsert(points).await
    }
    async fn delete(&self, ids: &[Uuid]) -> StoreResult<()> {
        if self.failing_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "vector writes switched off by the test".into(),
            ));
        }
        self.inner.delete(ids).await
    }
    async fn search(
        &self,
        v: Vec<f32>,
        f: &ContextFilter,
        l: usize,
        e: bool,
    ) -> StoreResult<Vec<VectorHit>> {
        self.inner.search(v, f, l, e).await
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
    async fn flush(&self) -> StoreResult<()> {
        self.inner.flush().await
    }
    async fn optimize(&self) -> StoreResult<bool> {
        self.inner.optimize().await
    }
}

/// A service on the real embedded stores in its own temp dir.
pub struct TestCore {
    pub core: Option<Core>,
    pub dir: tempfile::TempDir,
    pub embedder: Arc<SwitchableEmbedder>,
    pub vectors: Arc<SwitchableVectors>,
    pub principal: Principal,
}

impl TestCore {
    pub async fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir")).await
    }

    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        let settings = test_settings(dir.path());
        let metrics = Arc::new(Metrics::new());
        let embedder = Arc::new(SwitchableEmbedder {
            inner: Arc::new(CachedEmbedder::new(model(), 10_000, metrics.clone())),
            failing: AtomicBool::new(false),
        });
        let graph = context_store::app::open_graph(&settings)
            .await
            .expect("graph opens");
        let vectors = Arc::new(SwitchableVectors {
            inner: context_store::app::open_vectors(&settings)
                .await
                .expect("vectors open"),
            failing_writes: AtomicBool::new(false),
        });
        let core = Core::assemble(&settings, graph, vectors.clone(), embedder.clone(), metrics)
            .await
            .expect("core starts");
        Self {
            core: Some(core),
            dir,
            embedder,
            vectors,
            principal: Principal::local_trusted("tester"),
        }
    }

    pub fn service(&self) -> &Arc<ContextService> {
        &self.core.as_ref().expect("running").service
    }

    /// Stops cleanly and starts again on the same data dir.
    pub async fn restart(mut self) -> Self {
        self.core.take().expect("running").shutdown().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        drop(self);
        Self::start_in(dir).await
    }

    pub async fn session(&self, id: &str) {
        self.service()
            .create_session(
                &self.principal,
                CreateSessionRequest {
                    id: Some(id.into()),
                    purpose: format!("test {id}"),
                    ..Default::default()
                },
            )
            .await
            .expect("session created");
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

/// Seeded generator of varied, meaningful sentences.
pub struct Sentences {
    rng: fastrand::Rng,
}

const SUBJECTS: &[&str] = &[
    "The deployment pipeline",
    "Our database cluster",
    "The new intern",
    "A customer in Berlin",
    "The billing service",
    "The search index",
    "The mobile app",
    "The security team",
    "A late train",
    "The marketing budget",
    "The garden hose",
    "My grandmother",
    "The football coach",
    "A stray cat",
    "The orchestra",
    "The weather station",
    "The chemistry lab",
    "A small bakery",
    "The city council",
    "The hiking group",
];
const VERBS: &[&str] = &[
    "failed during",
    "was praised for",
    "needs help with",
    "slowed down because of",
    "was redesigned after",
    "celebrated",
    "complained about",
    "recovered from",
    "is waiting for",
    "was rescheduled due to",
];
const OBJECTS: &[&str] = &[
    "a memory leak in production",
    "the quarterly planning meeting",
    "a heavy snowstorm",
    "an expired TLS certificate",
    "the annual charity concert",
    "a broken water pipe",
    "the holiday sales rush",
    "a flaky integration test",
    "the migration to a new schema",
    "a surprise birthday party",
    "a power outage downtown",
    "the password reset flow",
    "a shortage of fresh flour",
    "the championship final",
    "an outdated dependency",
    "a noisy neighbour",
];
const TAILS: &[&str] = &[
    "yesterday",
    "last week",
    "this morning",
    "again",
    "for the third time",
    "before lunch",
    "after midnight",
    "on Friday",
    "",
    "despite the warnings",
];

impl Sentences {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    pub fn next_sentence(&mut self) -> String {
        let pick = |rng: &mut fastrand::Rng, list: &[&'static str]| list[rng.usize(..list.len())];
        let subject = pick(&mut self.rng, SUBJECTS);
        let verb = pick(&mut self.rng, VERBS);
        let object = pick(&mut self.rng, OBJECTS);
        let tail = pick(&mut self.rng, TAILS);
        let number = self.rng.u32(1..500);
        format!("{subject} {verb} {object} {tail} (ticket {number}).").replace("  ", " ")
    }
}
