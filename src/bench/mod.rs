//! Benchmarks: seeded text generation, the raw embedder baseline (texts per second at fixed batch sizes,
//! in parallel sessions, and through the micro-batcher), and the load harness (`load`, `report`).

pub mod load;
pub mod preload;
pub mod report;
pub mod retrieval;

use std::sync::Arc;
use std::time::Instant;

use crate::config::Settings;
use crate::embed::Embedder;
use crate::embed::fastembed::{FastEmbedder, ModelAssets, Precision, load_session};
use crate::error::StoreResult;
use crate::metrics::Metrics;

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
        Self { rng: fastrand::Rng::with_seed(seed) }
    }

    /// A sentence made unique by the number `n` (a few tokens more): the texts of every write scenario,
    /// and of the raw embedder baseline they are compared with, so both embed the same kind of text.
    pub fn unique_sentence(&mut self, n: u64) -> String {
        format!("{} #{n}", self.next_sentence())
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

/// Texts per second of one model session at each batch size, then of the batching embedder under
/// `concurrency` concurrent single-text callers.
pub async fn embedder_baseline(
    settings: &Settings,
    n_texts: usize,
    concurrency: usize,
) -> StoreResult<Vec<(String, f64)>> {
    let assets = settings.model_assets();
    assets.check()?;
    let mut sentences = Sentences::new(11);
    let texts: Vec<String> = (0..n_texts as u64).map(|n| sentences.unique_sentence(1_000_000 + n)).collect();
    let mut results = Vec::new();
    // Both graphs, batch size by batch size in turn, so the two are compared under the same load.
    let mut sessions_by_precision = Vec::new();
    for precision in [Precision::Fp32, Precision::Int8] {
        let assets = ModelAssets::in_dir(&settings.embedding.assets_dir, precision);
        if assets.check().is_err() {
            continue;
        }
        let mut session = load_session(&assets, settings.embedding.max_tokens)?;
        session
            .embed(&texts[..8.min(texts.len())], None)
            .map_err(|e| crate::error::StoreError::Unavailable(e.to_string()))?;
        sessions_by_precision.push((precision, session));
    }
    for batch in [1usize, 8, 32] {
        for (precision, session) in &mut sessions_by_precision {
            let started = Instant::now();
            for chunk in texts.chunks(batch) {
                session.embed(chunk, Some(batch)).map_err(|e| crate::error::StoreError::Unavailable(e.to_string()))?;
            }
            let rate = n_texts as f64 / started.elapsed().as_secs_f64();
            results.push((format!("raw session {}, batch {batch}", precision.name()), rate));
        }
    }
    drop(sessions_by_precision);
    // The model's own throughput on this machine: every session busy with batches of 32, in parallel.
    let sessions = settings.embedding.sessions.max(1);
    let started = Instant::now();
    let per_session = n_texts.div_ceil(sessions);
    let handles: Vec<_> = texts
        .chunks(per_session)
        .map(|share| {
            let share = share.to_vec();
            let assets = assets.clone();
            let max_tokens = settings.embedding.max_tokens;
            std::thread::spawn(move || -> StoreResult<()> {
                let mut session = load_session(&assets, max_tokens)?;
                for chunk in share.chunks(32) {
                    session.embed(chunk, Some(32)).map_err(|e| crate::error::StoreError::Unavailable(e.to_string()))?;
                }
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle.join().map_err(|_| crate::error::StoreError::Backend("embedding thread panicked".into()))??;
    }
    results.push((
        format!("raw {}, {sessions} sessions in parallel, batch 32 (incl. session load)", assets.precision.name()),
        n_texts as f64 / started.elapsed().as_secs_f64(),
    ));
    let embedder = Arc::new(FastEmbedder::start(&assets, settings.batcher_options(), Arc::new(Metrics::new()))?);
    let started = Instant::now();
    let queue = Arc::new(std::sync::Mutex::new(texts.clone()));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (embedder, queue) = (embedder.clone(), queue.clone());
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some(text) = next else {
                        return Ok::<(), crate::error::StoreError>(());
                    };
                    embedder.embed(vec![text]).await?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    results.push((
        format!(
            "micro-batcher {}, {} sessions, {concurrency} concurrent callers",
            assets.precision.name(),
            settings.embedding.sessions
        ),
        n_texts as f64 / started.elapsed().as_secs_f64(),
    ));
    Ok(results)
}
