//! Bulk preload for search at scale: the contexts go into the server's data directory through `import`
//! before the server starts, which is far faster than one `store_context` request each. Their embeddings
//! are computed in-process in batches of 32 and kept in a JSON Lines file beside the model assets, so a
//! second run with the same seed and count only imports.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::Sentences;
use crate::app::Core;
use crate::config::Settings;
use crate::domain::{Context, Session, Timestamp, Visibility, content_hash};
use crate::embed::Embedder;
use crate::embed::fastembed::{BatcherOptions, FastEmbedder, ModelAssets};
use crate::metrics::Metrics;
use crate::service::transfer::{FORMAT, FORMAT_VERSION, Record};

/// Sessions the preloaded contexts are spread over.
pub const SESSIONS: usize = 16;
const CHUNK: usize = 512;
/// Texts embedded by the model; past this many (embedding a million texts takes hours on two cores) each
/// further context gets a new generated text and, as its vector, a real embedding of an earlier text plus
/// Gaussian noise (`DERIVED_NOISE` per dimension, about cosine 0.9 to its source), renormalised.
pub const REAL_EMBEDDINGS: usize = 100_000;
const DERIVED_NOISE: f32 = 0.025;

/// A unit vector near `source`: Gaussian noise of standard deviation `sigma` per dimension, renormalised.
fn derived_vector(source: &[f32], sigma: f32, rng: &mut fastrand::Rng) -> Vec<f32> {
    let mut vector: Vec<f32> = source
        .iter()
        .map(|x| {
            // Box-Muller: two uniforms give one standard normal.
            let (u, v) = (rng.f32().max(f32::MIN_POSITIVE), rng.f32());
            x + sigma * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    vector.iter_mut().for_each(|x| *x /= norm);
    vector
}

pub fn session_id(index: usize) -> String {
    format!("bench-preload-{index}")
}

fn cache_file(assets_dir: &Path, seed: u64, count: usize) -> PathBuf {
    assets_dir.join("bench").join(format!("preload-seed{seed}-{count}.jsonl"))
}

/// The import file for `count` contexts: generated (texts, then embeddings in batches) unless cached.
async fn import_file(assets_dir: &Path, seed: u64, count: usize, progress: bool) -> anyhow::Result<PathBuf> {
    let path = cache_file(assets_dir, seed, count);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
    // Embedded by the graph the server uses by default (files cached before 2026-11-30 by the fp32 graph;
    // they agree to cosine >= 0.98, so either serves whatever graph the server runs).
    let assets = ModelAssets::in_dir(assets_dir, crate::embed::fastembed::Precision::default());
    let options =
        BatcherOptions { sessions: 2, max_batch: 32, batch_window: Duration::from_millis(2), max_tokens: 256 };
    let model = FastEmbedder::start(&assets, options, Arc::new(Metrics::new())).map_err(|e| anyhow::anyhow!("{e}"))?;
    let partial = path.with_extension("partial");
    let mut out = BufWriter::new(std::fs::File::create(&partial)?);
    let now = Timestamp::now();
    let mut line = |record: &Record| -> anyhow::Result<()> {
        serde_json::to_writer(&mut out, record)?;
        out.write_all(b"\n")?;
        Ok(())
    };
    line(&Record::Header { format: FORMAT.into(), version: FORMAT_VERSION, exported_at: now })?;
    for index in 0..SESSIONS {
        line(&Record::Session(Session {
            id: session_id(index),
            purpose: "benchmark preload".into(),
            metadata: Default::default(),
            created_by: "bench-admin".into(),
            created_at: now,
        }))?;
    }
    // A larger preload starts with the same texts as the one of `REAL_EMBEDDINGS`: its embeddings are reused.
    let mut real: Vec<Vec<f32>> = if count > REAL_EMBEDDINGS {
        let base = Box::pin(import_file(assets_dir, seed, REAL_EMBEDDINGS, progress)).await?;
        embeddings_in(&base)?
    } else {
        Vec::new()
    };
    let reused = real.len();
    let bar = super::load::progress_bar(progress, count as u64, "embedding preload");
    let mut sentences = Sentences::new(seed.wrapping_mul(7919));
    let mut noise = fastrand::Rng::with_seed(seed ^ 0xd1ce);
    let mut done = 0;
    while done < count {
        // Chunks stop at `REAL_EMBEDDINGS`, where the embedded texts end.
        let end = count.min(done + CHUNK).min(if done < REAL_EMBEDDINGS { REAL_EMBEDDINGS } else { usize::MAX });
        let texts: Vec<String> = (done..end).map(|n| sentences.unique_sentence(n as u64)).collect();
        let vectors = if done < reused {
            real[done..done + texts.len()].to_vec()
        } else if done < REAL_EMBEDDINGS {
            let vectors = model.embed(texts.clone()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            real.extend(vectors.iter().cloned());
            vectors
        } else {
            (done..done + texts.len())
                .map(|n| derived_vector(&real[n % real.len()], DERIVED_NOISE, &mut noise))
                .collect()
        };
        for (content, embedding) in texts.into_iter().zip(vectors) {
            let context = Context {
                id: Uuid::now_v7(),
                session_id: session_id(done % SESSIONS),
                agent_id: format!("bench-agent-{}", done % 8),
                context_type: "note".into(),
                content_hash: content_hash(&content),
                content,
                tags: vec![format!("t{}", done % 10)],
                metadata: Default::default(),
                visibility: Visibility::Public,
                created_at: now,
                updated_at: now,
                version: 1,
                expires_at: None,
            };
            line(&Record::Context { context, embedding, versions: Vec::new() })?;
            done += 1;
        }
        bar.set_position(done as u64);
    }
    bar.finish_and_clear();
    out.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?.sync_all()?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// What a kept data directory was preloaded with; a later run on it must ask for the same.
const KEPT_MARKER: &str = "bench-preload.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Kept {
    seed: u64,
    count: usize,
}

/// Records in a kept data directory the preload just imported into it.
pub fn mark_kept(dir: &Path, seed: u64, count: usize) -> anyhow::Result<()> {
    Ok(std::fs::write(dir.join(KEPT_MARKER), serde_json::to_string(&Kept { seed, count })?)?)
}

/// Refuses a kept data directory that holds anything but the preload of `count` contexts with `seed`.
pub fn check_kept(dir: &Path, seed: u64, count: usize) -> anyhow::Result<()> {
    let found: Option<Kept> =
        std::fs::read_to_string(dir.join(KEPT_MARKER)).ok().and_then(|text| serde_json::from_str(&text).ok());
    let holds = match found {
        Some(kept) if kept == (Kept { seed, count }) => return Ok(()),
        Some(kept) => format!("the preload of {} contexts with seed {}", kept.count, kept.seed),
        None => "a store no search preload made".to_string(),
    };
    anyhow::bail!(
        "the data directory {} holds {holds}, not the preload of {count} contexts with seed {seed}: use another directory",
        dir.display()
    )
}

/// The ids of the contexts of the cached preload of `count` (already imported into a kept data directory).
pub fn preloaded_ids(assets_dir: &Path, seed: u64, count: usize) -> anyhow::Result<Vec<String>> {
    let file = cache_file(assets_dir, seed, count);
    anyhow::ensure!(file.exists(), "no cached preload {}: the data directory was loaded from another", file.display());
    ids_in(&file)
}

/// The ids of the contexts in an import file, in file order (each line's other fields are not kept).
fn ids_in(file: &Path) -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Line {
        context: Option<Id>,
    }
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    let mut ids = Vec::new();
    for line in BufReader::new(std::fs::File::open(file)?).lines() {
        if let Some(context) = serde_json::from_str::<Line>(&line?)?.context {
            ids.push(context.id);
        }
    }
    Ok(ids)
}

/// The embeddings of the contexts in an import file, in file order.
fn embeddings_in(file: &Path) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut embeddings = Vec::new();
    for line in BufReader::new(std::fs::File::open(file)?).lines() {
        if let Record::Context { embedding, .. } = serde_json::from_str(&line?)? {
            embeddings.push(embedding);
        }
    }
    Ok(embeddings)
}

/// Imports `count` generated contexts into the (stopped) data directory `data_dir`; returns their ids and
/// the seconds the import took.
pub async fn bulk_preload(
    data_dir: &Path,
    assets_dir: &Path,
    seed: u64,
    count: usize,
    progress: bool,
) -> anyhow::Result<(Vec<String>, f64)> {
    let file = import_file(assets_dir, seed, count, progress).await?;
    let started = std::time::Instant::now();
    let mut settings = Settings { data_dir: data_dir.to_path_buf(), ..Settings::default() };
    settings.embedding.assets_dir = assets_dir.to_path_buf();
    let core = Core::start(&settings).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let bar = super::load::progress_bar(progress, count as u64 + SESSIONS as u64 + 1, "importing preload");
    let imported = core.service.import(BufReader::new(std::fs::File::open(&file)?), |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    core.shutdown().await;
    let seconds = started.elapsed().as_secs_f64();
    let imported = imported.map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(imported.contexts as usize == count, "imported {} of {count} contexts", imported.contexts);
    let ids = ids_in(&file)?;
    anyhow::ensure!(ids.len() == count, "the import file holds {} of {count} contexts", ids.len());
    Ok((ids, seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_derived_vector_is_a_unit_vector_near_its_source() {
        let mut rng = fastrand::Rng::with_seed(1);
        let source: Vec<f32> = (0..384).map(|i| (i * 37 % 101) as f32 - 50.0).collect();
        let norm = source.iter().map(|x| x * x).sum::<f32>().sqrt();
        let source: Vec<f32> = source.iter().map(|x| x / norm).collect();
        let derived = derived_vector(&source, DERIVED_NOISE, &mut rng);
        let length = derived.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine: f32 = derived.iter().zip(&source).map(|(a, b)| a * b).sum();
        assert!((length - 1.0).abs() < 1e-4, "{length}");
        assert!((0.85..0.95).contains(&cosine), "cosine {cosine}");
        assert_ne!(derived, derived_vector(&source, DERIVED_NOISE, &mut rng));
    }
}
