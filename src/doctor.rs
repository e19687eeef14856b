//! `context-store doctor`: checks what the service needs, one line per check: data dir, embedding assets
//! (sha256), the model, both stores (opened as the service would: a fresh data dir gets empty stores), keys.
//! Exit status 1 when a check fails.

use std::path::Path;
use std::time::Instant;

use crate::config::Settings;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &'static str, outcome: Result<String, String>) -> Check {
    match outcome {
        Ok(detail) => Check { name, ok: true, detail },
        Err(detail) => Check { name, ok: false, detail },
    }
}

fn data_dir(dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
    let probe = dir.join(".doctor-probe");
    std::fs::write(&probe, b"probe").map_err(|e| format!("{}: not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(format!("{} is writable", dir.display()))
}

fn assets(settings: &Settings) -> Result<String, String> {
    use sha2::Digest;
    let assets = settings.model_assets();
    assets.check().map_err(|e| e.to_string())?;
    let file = assets.model_file();
    let onnx = std::fs::read(&file).map_err(|e| e.to_string())?;
    let digest = hex::encode(sha2::Sha256::digest(&onnx));
    let expected = assets.precision.model_sha256();
    if digest != expected {
        return Err(format!("{} has sha256 {digest}, expected {expected}: run scripts/setup", file.display()));
    }
    Ok(format!(
        "{} (ONNX Runtime and all-MiniLM-L6-v2 {}, sha256 verified)",
        settings.embedding.assets_dir.display(),
        assets.precision.name()
    ))
}

/// Runs every check; prints them as it goes.
pub async fn run(settings: &Settings) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut report = |c: Check| {
        println!("{} {:<10} {}", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail);
        checks.push(c);
    };
    report(Check { name: "version", ok: true, detail: format!("context-store {}", env!("CARGO_PKG_VERSION")) });
    report(check("data_dir", data_dir(&settings.data_dir)));
    report(check("assets", assets(settings)));

    let started = Instant::now();
    let embedder = crate::app::open_embedder(settings, std::sync::Arc::new(crate::metrics::Metrics::new()));
    let embedded = match embedder {
        Ok(embedder) => embedder
            .embed(vec!["doctor probe".into()])
            .await
            .map(|v| format!("fastembed: a {}-d embedding in {:?}", v[0].len(), started.elapsed()))
            .map_err(|e| e.to_string()),
        Err(err) => Err(err.to_string()),
    };
    report(check("embedder", embedded));

    let graph = match crate::app::open_graph(settings).await {
        Ok(graph) => match graph.counts().await {
            Ok(c) => Ok(format!(
                "{}: {} sessions, {} contexts, {} agent states, {} journaled changes pending",
                graph.backend(),
                c.sessions,
                c.contexts,
                c.agent_states,
                c.pending_index
            )),
            Err(err) => Err(format!("{}: {err}", settings.graph.backend)),
        },
        Err(err) => Err(format!("{}: {err}", settings.graph.backend)),
    };
    report(check("graph", graph));

    // A check reports what it finds now: no waiting for a Qdrant server that does not answer.
    let mut at_once = settings.clone();
    at_once.vector.qdrant.startup_wait_ms = 0;
    let vectors = match crate::app::open_vectors(&at_once).await {
        Ok(vectors) => match (vectors.count().await, vectors.indexed().await) {
            (Ok(count), Ok(indexed)) => {
                Ok(format!("{}: {count} points, {indexed} in the HNSW index", vectors.backend()))
            }
            (Err(err), _) | (_, Err(err)) => Err(format!("{}: {err}", vectors.backend())),
        },
        Err(err) => Err(format!("{}: {err}", settings.vector.backend)),
    };
    report(check("vectors", vectors));

    let keys = match crate::app::open_key_store(settings).await {
        Ok(keys) => keys.list().await,
        Err(err) => Err(err),
    }
    .map(|list| {
        let active = list.iter().filter(|k| !k.revoked).count();
        format!("{active} active API keys ({} revoked)", list.len() - active)
    })
    .map_err(|e| e.to_string());
    report(check("keys", keys));
    checks
}
