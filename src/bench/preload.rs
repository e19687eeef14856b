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
    // The cached preload files were embedded by the fp32 graph; they stay valid whatever the server runs.
    let assets = ModelAssets::in_dir(assets_dir, crate::embed::fastembed::Precision::Fp32);
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
    let bar = super::load::progress_bar(progress, count as u64, "embedding preload");
    let mut sentences = Sentences::new(seed.wrapping_mul(7919));
    let mut done = 0;
    while done < count {
        let texts: Vec<String> = (done..count.min(done + CHUNK)).map(|n| sentences.unique_sentence(n as u64)).collect();
        let vectors = model.embed(texts.clone()).await.map_err(|e| anyhow::anyhow!("{e}"))?;
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

/// Imports `count` generated contexts into the (stopped) data directory `data_dir`; returns their ids.
pub async fn bulk_preload(
    data_dir: &Path,
    assets_dir: &Path,
    seed: u64,
    count: usize,
    progress: bool,
) -> anyhow::Result<Vec<String>> {
    let file = import_file(assets_dir, seed, count, progress).await?;
    let mut settings = Settings { data_dir: data_dir.to_path_buf(), ..Settings::default() };
    settings.embedding.assets_dir = assets_dir.to_path_buf();
    let core = Core::start(&settings).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let bar = super::load::progress_bar(progress, count as u64 + SESSIONS as u64 + 1, "importing preload");
    let imported = core.service.import(BufReader::new(std::fs::File::open(&file)?), |n| bar.set_position(n)).await;
    bar.finish_and_clear();
    core.shutdown().await;
    let imported = imported.map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(imported.contexts as usize == count, "imported {} of {count} contexts", imported.contexts);
    let mut ids = Vec::with_capacity(count);
    for line in BufReader::new(std::fs::File::open(&file)?).lines() {
        if let Record::Context { context, .. } = serde_json::from_str(&line?)? {
            ids.push(context.id.to_string());
        }
    }
    Ok(ids)
}
