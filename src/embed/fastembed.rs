//! all-MiniLM-L6-v2 through fastembed and ONNX Runtime, loaded at run time from the files `scripts/setup`
//! installs. `TextEmbedding::embed` takes `&mut self`, so a small pool of model sessions serves a
//! micro-batcher: requests queue on a channel, the dispatcher waits for a free session, then takes up to
//! `max_batch` queued texts (waiting at most `batch_window`) and runs them as one batch in `spawn_blocking`.
//! Under load, batches grow by themselves while every session is busy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fastembed::{InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Embedder;
use crate::error::{StoreError, StoreResult};
use crate::metrics::Metrics;

pub const DIMENSION: usize = 384;
const SETUP_HINT: &str = "run `scripts/setup` (or set CTX__EMBEDDING__ASSETS_DIR to where it installed them)";

/// Which graph of the model runs: the fp32 export, or its int8 dynamic quantization (weights int8 per
/// output channel, activations quantized per batch at run time), both made and checked by `scripts/setup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    #[default]
    Int8,
}

impl Precision {
    pub fn model_file(self) -> &'static str {
        match self {
            Precision::Fp32 => "model.onnx",
            Precision::Int8 => "model_int8.onnx",
        }
    }

    /// The sha256 `scripts/setup` checks the file against.
    pub fn model_sha256(self) -> &'static str {
        match self {
            Precision::Fp32 => "054c1ac508f04538ad93aa46e3980da386bb22d35aa8363247f150b2cb5da291",
            Precision::Int8 => "8499d69b7f39a0f84bf0b7503a3c9b8718d735c26d60f3d6fec8d2908c0e3673",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }
}

/// Where the model files are.
#[derive(Debug, Clone)]
pub struct ModelAssets {
    pub onnxruntime_library: PathBuf,
    pub model_dir: PathBuf,
    pub precision: Precision,
}

impl ModelAssets {
    /// The layout `scripts/setup` creates: `lib/libonnxruntime.so` and `model/`.
    pub fn in_dir(assets_dir: &Path, precision: Precision) -> Self {
        Self {
            onnxruntime_library: assets_dir.join("lib").join("libonnxruntime.so"),
            model_dir: assets_dir.join("model"),
            precision,
        }
    }

    /// The ONNX graph this precision loads.
    pub fn model_file(&self) -> PathBuf {
        self.model_dir.join(self.precision.model_file())
    }

    fn required_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.onnxruntime_library.clone(), self.model_file()];
        for name in ["tokenizer.json", "config.json", "special_tokens_map.json", "tokenizer_config.json"] {
            files.push(self.model_dir.join(name));
        }
        files
    }

    /// Fails with a message naming the setup command when a file is missing.
    pub fn check(&self) -> StoreResult<()> {
        for file in self.required_files() {
            if !file.exists() {
                return Err(StoreError::Unavailable(format!(
                    "embedding asset {} is missing: {SETUP_HINT}",
                    file.display()
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct BatcherOptions {
    /// Model sessions (each runs one batch at a time on one intra-op thread).
    pub sessions: usize,
    pub max_batch: usize,
    pub batch_window: Duration,
    pub max_tokens: usize,
}

struct Job {
    text: String,
    reply: oneshot::Sender<StoreResult<Vec<f32>>>,
}

pub struct FastEmbedder {
    jobs: mpsc::Sender<Job>,
}

fn read(path: &Path) -> StoreResult<Vec<u8>> {
    std::fs::read(path).map_err(|e| StoreError::Unavailable(format!("cannot read {}: {e}", path.display())))
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedding model: {err}"))
}

/// ONNX Runtime is loaded once per process; later calls reuse the environment.
fn ort_environment(library: &Path) -> StoreResult<ort::environment::Environment> {
    static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            ort::init_from(library)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))?
                .with_name("context-store")
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(unavailable)
}

/// ONNX Runtime graph fusions left off. On this CPU kernel set, SkipLayerNormalization costs several times the
/// Add + LayerNormalization it replaces, and BiasGelu more than the bias Add (folded into the quantized MatMul
/// anyway) and Gelu: with both off the int8 graph runs ~1.3 x faster (BENCHMARKS.md, "int8 embedder without
/// the slower fusions"). The fp32 graph has neither pattern in a form ONNX Runtime fuses, so it is unchanged.
const SLOWER_FUSIONS: &str = "SkipLayerNormFusion;BiasGeluFusion";

/// One model session (fastembed over ONNX Runtime), single intra-op thread, spinning off.
pub fn load_session(assets: &ModelAssets, max_tokens: usize) -> StoreResult<TextEmbedding> {
    let dir = &assets.model_dir;
    let tokenizer_files = TokenizerFiles {
        tokenizer_file: read(&dir.join("tokenizer.json"))?,
        config_file: read(&dir.join("config.json"))?,
        special_tokens_map_file: read(&dir.join("special_tokens_map.json"))?,
        tokenizer_config_file: read(&dir.join("tokenizer_config.json"))?,
    };
    let model =
        UserDefinedEmbeddingModel::new(read(&assets.model_file())?, tokenizer_files).with_pooling(Pooling::Mean);
    let options = InitOptionsUserDefined::new()
        .with_environment(ort_environment(&assets.onnxruntime_library)?)
        .with_max_length(max_tokens)
        .with_intra_threads(1)
        .with_session_config("session.intra_op.allow_spinning", "0")
        .with_session_config("optimization.disable_specified_optimizers", SLOWER_FUSIONS);
    TextEmbedding::try_new_from_user_defined(model, options).map_err(unavailable)
}

impl FastEmbedder {
    /// Loads `options.sessions` model sessions and starts the batching dispatcher.
    pub fn start(assets: &ModelAssets, options: BatcherOptions, metrics: Arc<Metrics>) -> StoreResult<Self> {
        assets.check()?;
        let sessions = options.sessions.max(1);
        let pool: Vec<TextEmbedding> =
            (0..sessions).map(|_| load_session(assets, options.max_tokens)).collect::<StoreResult<_>>()?;
        let (jobs, receiver) = mpsc::channel(4096);
        // The dispatcher owns a small runtime on its own thread, so the embedder outlives whichever
        // runtime created it; it stops when the last sender is dropped.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .max_blocking_threads(sessions)
            .build()
            .map_err(unavailable)?;
        let pool = Arc::new(Mutex::new(pool));
        std::thread::Builder::new()
            .name("embed-dispatch".into())
            .spawn(move || runtime.block_on(dispatch(receiver, pool, sessions, options, metrics)))
            .map_err(unavailable)?;
        Ok(Self { jobs })
    }
}

async fn dispatch(
    mut receiver: mpsc::Receiver<Job>,
    pool: Arc<Mutex<Vec<TextEmbedding>>>,
    sessions: usize,
    options: BatcherOptions,
    metrics: Arc<Metrics>,
) {
    let free = Arc::new(Semaphore::new(sessions));
    while let Some(first) = receiver.recv().await {
        let Ok(permit) = free.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + options.batch_window;
        while batch.len() < options.max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(job)) => batch.push(job),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        let pool = pool.clone();
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || {
            let texts: Vec<&str> = batch.iter().map(|job| job.text.as_str()).collect();
            let started = Instant::now();
            let mut session =
                pool.lock().unwrap_or_else(|e| e.into_inner()).pop().expect("a permit means a free session");
            let result = session.embed(&texts, Some(texts.len()));
            pool.lock().unwrap_or_else(|e| e.into_inner()).push(session);
            drop(permit);
            metrics.embed_batch_size.observe(batch.len() as f64);
            metrics.embed_batch_latency.observe(started.elapsed().as_secs_f64());
            match result {
                Ok(vectors) => {
                    for (job, vector) in batch.into_iter().zip(vectors) {
                        let _ = job.reply.send(Ok(vector));
                    }
                }
                Err(err) => {
                    let message = err.to_string();
                    for job in batch {
                        let _ = job.reply.send(Err(unavailable(&message)));
                    }
                }
            }
        });
    }
}

#[async_trait]
impl Embedder for FastEmbedder {
    fn dimension(&self) -> usize {
        DIMENSION
    }

    async fn embed(&self, texts: Vec<String>) -> StoreResult<Vec<Vec<f32>>> {
        let mut replies = Vec::with_capacity(texts.len());
        for text in texts {
            let (reply, receiver) = oneshot::channel();
            self.jobs
                .send(Job { text, reply })
                .await
                .map_err(|_| unavailable("the embedding dispatcher has stopped"))?;
            replies.push(receiver);
        }
        let mut vectors = Vec::with_capacity(replies.len());
        for receiver in replies {
            vectors.push(receiver.await.map_err(|_| unavailable("the embedding worker dropped a request"))??);
        }
        Ok(vectors)
    }
}

#[cfg(test)]
mod tests {
    use super::Precision;

    /// `doctor` and `scripts/setup` check the model files against the same digests.
    #[test]
    fn model_digests_match_the_ones_scripts_setup_pins() {
        let setup = std::fs::read_to_string(crate::test_checkout().join("scripts/setup")).unwrap();
        let pinned = |name: &str| {
            setup
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} in scripts/setup"))
                .to_string()
        };
        assert_eq!(pinned("MODEL_ONNX_SHA256"), Precision::Fp32.model_sha256());
        assert_eq!(pinned("MODEL_INT8_SHA256"), Precision::Int8.model_sha256());
    }
}
