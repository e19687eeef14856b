//! The command line: argument parsing and the commands, each a thin call into the library.

use std::path::PathBuf;

use crate::app::Core;
use crate::config::Settings;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "context-store", version, about = "A graph-and-vector context store for AI agents, served over MCP")]
pub struct Cli {
    /// A TOML settings file (CTX__SECTION__KEY environment variables override it).
    #[arg(long, global = true, env = "CTX_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve MCP (Streamable HTTP at /mcp) and the HTTP tool endpoint.
    Serve,
    /// Serve MCP over stdin/stdout (logs go to stderr).
    Stdio,
    /// Rebuild the vector side from the graph (progress bar; resumes after an interruption).
    Reindex {
        /// Ignore a checkpoint left by an interrupted run and start from the first context.
        #[arg(long)]
        from_start: bool,
        /// Delete both vector collections and make them again from the collection definition first (a
        /// collection made before the lexical stage gains it); implies --from-start.
        #[arg(long)]
        recreate: bool,
    },
    /// Check the data dir, embedding assets, model, stores and keys; exit status 1 if anything fails.
    Doctor,
    /// Write every session, context (with embedding and versions), relation and agent state as JSON Lines.
    Export {
        /// The file to write; `-` for standard output.
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
    /// Read an export and store what is missing (idempotent: running it again changes nothing).
    Import {
        /// The JSON Lines file written by `export`.
        file: PathBuf,
    },
    /// Manage API keys (stored as hashes in the data dir; a key is shown only when created).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Measure raw embedder throughput (texts/s) at batch 1, 8, 32 and through the micro-batcher.
    BenchEmbedder {
        #[arg(long, default_value_t = 256)]
        texts: usize,
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
    },
    /// Run the load harness: concurrent connections over MCP or the HTTP tool endpoint, one scenario at a
    /// time, each against its own fresh server (or --url). Writes a table, JSON and an SVG plot.
    Bench {
        /// Scenarios to run (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        scenarios: Vec<crate::bench::load::Scenario>,
        /// Concurrent connections; several (`8,128`) are measured in turn against the same server.
        #[arg(long, value_delimiter = ',', default_value = "128")]
        connections: Vec<usize>,
        /// Measured seconds per scenario.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, value_enum, default_value = "mcp")]
        transport: crate::bench::load::Transport,
        /// Target a running server instead of starting one.
        #[arg(long)]
        url: Option<String>,
        /// An admin key for --url.
        #[arg(long, env = "CTX_BENCH_KEY")]
        key: Option<String>,
        #[arg(long, default_value_t = 1000)]
        preload: usize,
        #[arg(long, default_value_t = 100_000)]
        search_preload: usize,
        /// Keep the started server's data here: the search preload is imported once, later runs with the
        /// same directory start on it (measure a large store several ways without importing it again).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The stages the search scenarios ask for (e.g. `vector,fuzzy`); default: all.
        #[arg(long, value_enum, value_delimiter = ',')]
        search_stages: Option<Vec<crate::service::Stage>>,
        /// Where report.json, report.md and latency.svg go.
        #[arg(long, default_value = "benchmarks/results")]
        out: PathBuf,
        /// Seconds, not minutes: few connections, small preloads (the test suite runs this).
        #[arg(long)]
        smoke: bool,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Also measure the raw embedder in-process (the write scenario's baseline).
        #[arg(long)]
        embedder_baseline: bool,
    },
    /// Measure retrieval quality: store a set (JSON Lines from benchmarks/retrieval/prepare.py) in a fresh
    /// embedded store and report recall@1/5/10 and MRR for each combination of search stages.
    EvalRetrieval {
        /// The set's JSON Lines file.
        set: PathBuf,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also run the full pipeline over a grid of vector and lexical weights.
        #[arg(long)]
        sweep: bool,
        /// Keep the store in this folder and use it again next time (the set is stored once).
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Test aid: stores contexts from concurrent writers until killed, printing `ACK <id> <content>`
    /// for every acknowledged write (used by the kill -9 durability test).
    #[command(hide = true)]
    CrashWriter {
        #[arg(long)]
        session: String,
        #[arg(long, default_value_t = 16)]
        writers: usize,
    },
}

#[derive(Subcommand)]
pub enum KeysAction {
    /// Create a key and print it once.
    Create {
        /// The agent the key acts as.
        #[arg(long)]
        agent_id: String,
        /// A free-form kind of agent (e.g. claude-code, analyst).
        #[arg(long, default_value = "agent")]
        agent_type: String,
        /// Comma-separated subset of read, write, query, admin.
        #[arg(long, default_value = "read,write")]
        permissions: String,
        /// Limit the key to these sessions (comma-separated); all sessions when absent.
        #[arg(long)]
        sessions: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id; it stops working at once, tokens minted from it included.
    Revoke { key_id: String },
}

async fn keys_command(settings: &Settings, action: KeysAction) -> anyhow::Result<()> {
    use crate::auth::{NewKey, Permissions};
    let keys = crate::app::open_key_store(settings).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
    match action {
        KeysAction::Create { agent_id, agent_type, permissions, sessions } => {
            let agent_id =
                crate::domain::parse_identifier("agent_id", &agent_id).map_err(|e| anyhow::anyhow!(e.to_string()))?;
            let permissions = Permissions::parse(&permissions).map_err(|e| anyhow::anyhow!(e))?;
            let sessions = sessions.map(|s| s.split(',').map(|id| id.trim().to_string()).collect());
            let new = NewKey { agent_id, agent_type, permissions, sessions };
            let (record, key) = keys.create(&new).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
            eprintln!(
                "key {} for agent {} ({}); shown once:",
                record.key_id,
                record.agent_id,
                permissions.names().join(",")
            );
            println!("{key}");
        }
        KeysAction::List => {
            println!(
                "{:<14} {:<24} {:<14} {:<24} {:<8} sessions",
                "key_id", "agent_id", "agent_type", "permissions", "revoked"
            );
            for key in keys.list().await.map_err(|e| anyhow::anyhow!(e.to_string()))? {
                let sessions = key.sessions.map(|s| s.join(",")).unwrap_or_else(|| "*".into());
                println!(
                    "{:<14} {:<24} {:<14} {:<24} {:<8} {sessions}",
                    key.key_id,
                    key.agent_id,
                    key.agent_type,
                    key.permissions.names().join(","),
                    key.revoked
                );
            }
        }
        KeysAction::Revoke { key_id } => {
            keys.revoke(&key_id).await.map_err(|err| match err {
                crate::error::StoreError::NotFound => anyhow::anyhow!("no key with id {key_id}"),
                other => anyhow::anyhow!(other.to_string()),
            })?;
            eprintln!(
                "key {key_id} revoked (every running server stops accepting it within {} ms)",
                crate::auth::VERIFIED_TTL.as_millis()
            );
        }
    }
    Ok(())
}

/// The log filter when `RUST_LOG` is not set. qdrant-edge warns at every start that its feature flags and
/// multi-mmap check were never initialised: both are set up by Qdrant's own `main`, not exposed by the
/// crate, and their defaults are what the embedded store wants, so those two notices are quieted.
const DEFAULT_LOG_FILTER: &str = "info,qdrant_edge::common::flags=error,qdrant_edge::common::mmap::ops=error";

/// Logs go to stderr; colours only when it is a terminal (a file or a pipe gets plain text).
pub fn init_tracing() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn crash_writer(settings: &Settings, session: String, writers: usize) -> anyhow::Result<()> {
    use crate::auth::Principal;
    use crate::service::{CreateSessionRequest, StoreContextRequest};
    use std::io::Write;

    let core = Core::start(settings).await?;
    let principal = Principal::local_trusted("crash-writer");
    let request =
        CreateSessionRequest { id: Some(session.clone()), purpose: "crash test".into(), ..Default::default() };
    // The session exists already after the first round.
    let _ = core.service.create_session(&principal, request).await;
    let run = uuid::Uuid::now_v7();
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let service = core.service.clone();
            let (principal, session) = (principal.clone(), session.clone());
            tokio::spawn(async move {
                for n in 0u64.. {
                    let content = format!("crash run {run} writer {writer} entry {n} about topic {}", n % 7);
                    let request = StoreContextRequest {
                        session_id: session.clone(),
                        content: content.clone(),
                        ..Default::default()
                    };
                    match service.store_context(&principal, request).await {
                        Ok(stored) => {
                            let mut out = std::io::stdout().lock();
                            let _ = writeln!(out, "ACK {} {content}", stored.context.id);
                            let _ = out.flush();
                        }
                        Err(err) => eprintln!("write failed: {err}"),
                    }
                }
            })
        })
        .collect();
    futures::future::join_all(tasks).await;
    Ok(())
}

/// Rebuilds the vector side from the graph in id order, writing a checkpoint (the last id done) to the data
/// dir after every batch, so an interrupted run continues where it stopped.
async fn reindex(settings: &Settings, from_start: bool) -> anyhow::Result<()> {
    let checkpoint = settings.data_dir.join("reindex.checkpoint");
    let resume = match std::fs::read_to_string(&checkpoint) {
        Ok(text) if !from_start => Some(uuid::Uuid::parse_str(text.trim())?),
        _ => None,
    };
    let core = Core::start(settings).await?;
    let total = core.service.graph().counts().await.map_err(|e| anyhow::anyhow!(e.to_string()))?.contexts;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    bar.set_message("reindex");
    if let Some(after) = resume {
        eprintln!("resuming after {after} (use --from-start to begin again)");
    }
    let done = core
        .service
        .reindex(500, resume, |done, last| {
            bar.set_position(done);
            let _ = std::fs::write(&checkpoint, last.to_string());
        })
        .await
        .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    bar.finish();
    let _ = std::fs::remove_file(&checkpoint);
    eprintln!("reindex complete: {done} contexts");
    core.shutdown().await;
    Ok(())
}

/// Stores a retrieval set in a fresh embedded store (a temporary data dir, the configured model) and prints
/// the report as a Markdown table.
async fn eval_retrieval(
    mut settings: Settings,
    set: &std::path::Path,
    json: Option<&std::path::Path>,
    sweep: bool,
    store: Option<PathBuf>,
) -> anyhow::Result<()> {
    use crate::bench::retrieval;
    let loaded = retrieval::RetrievalSet::load(set)?;
    let temporary = tempfile::tempdir()?;
    settings.data_dir = store.unwrap_or_else(|| temporary.path().to_path_buf());
    settings.graph.backend = "sqlite".into();
    settings.vector.backend = "edge".into();
    let core = Core::start(&settings).await?;
    let kept = settings.data_dir.join("retrieval-ids.json");
    let ids: std::collections::HashMap<String, String> = match std::fs::read_to_string(&kept) {
        Ok(text) => serde_json::from_str(&text)?,
        Err(_) => {
            let started = std::time::Instant::now();
            let ids = retrieval::load_into(&core.service, &loaded).await?;
            eprintln!("stored {} contexts in {:.0} s", ids.len(), started.elapsed().as_secs_f64());
            std::fs::write(&kept, serde_json::to_string(&ids)?)?;
            ids
        }
    };
    let mut modes = retrieval::modes();
    if sweep {
        modes.extend(retrieval::weight_grid());
    }
    let report = retrieval::evaluate(&core.service, &loaded, &ids, &modes).await?;
    println!("{}", report.markdown());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    core.shutdown().await;
    Ok(())
}

/// A progress counter on stderr (hidden when stderr is not a terminal).
fn counting_bar(what: &'static str) -> indicatif::ProgressBar {
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} {msg} ({per_sec})").expect("valid template"),
    );
    bar.set_message(what);
    bar
}

/// Runs one command with the settings the command line points at.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => {
            let app = crate::app::App::build(settings).await?;
            tracing::info!(port = app.port(), "context-store listening");
            app.run_until_stopped(crate::app::shutdown_signal()).await?;
        }
        Command::Stdio => {
            let core = Core::start(&settings).await?;
            let principal = crate::auth::Principal::local_trusted(&settings.identity.agent_id);
            crate::mcp::serve_stdio(core.service.clone(), core.auth.clone(), principal).await?;
            core.shutdown().await;
        }
        Command::Reindex { from_start, recreate } => {
            if recreate {
                crate::app::drop_vector_collections(&settings).await?;
                eprintln!("vector collections removed; rebuilding them from the graph");
            }
            reindex(&settings, from_start || recreate).await?
        }
        Command::Export { out } => {
            let core = Core::start(&settings).await?;
            let bar = counting_bar("exported");
            let counts = if out.as_os_str() == "-" {
                let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
                core.service.export(&mut stdout, |n| bar.set_position(n)).await
            } else {
                let mut file = std::io::BufWriter::new(std::fs::File::create(&out)?);
                let counts = core.service.export(&mut file, |n| bar.set_position(n)).await;
                std::io::Write::flush(&mut file)?;
                counts
            }
            .map_err(|e| anyhow::anyhow!(e.to_string()))?;
            bar.finish_and_clear();
            eprintln!("exported {}", serde_json::to_string(&counts)?);
            core.shutdown().await;
        }
        Command::Import { file } => {
            let core = Core::start(&settings).await?;
            let bar = counting_bar("imported lines");
            let input = std::io::BufReader::new(std::fs::File::open(&file)?);
            let counts = core
                .service
                .import(input, |n| bar.set_position(n))
                .await
                .map_err(|e| anyhow::anyhow!(e.to_string()))?;
            bar.finish_and_clear();
            eprintln!("imported {}", serde_json::to_string(&counts)?);
            core.shutdown().await;
        }
        Command::Doctor => {
            let checks = crate::doctor::run(&settings).await;
            if checks.iter().any(|c| !c.ok) {
                std::process::exit(1);
            }
        }
        Command::Keys { action } => keys_command(&settings, action).await?,
        Command::Bench {
            scenarios,
            connections,
            seconds,
            transport,
            url,
            key,
            preload,
            search_preload,
            data_dir,
            search_stages,
            out,
            smoke,
            seed,
            embedder_baseline,
        } => {
            use crate::bench::load::{LoadOptions, Scenario};
            let scenarios = if scenarios.is_empty() {
                vec![
                    Scenario::Noop,
                    Scenario::Ping,
                    Scenario::Agent,
                    Scenario::Write,
                    Scenario::Read,
                    Scenario::Search,
                    Scenario::SearchNew,
                    Scenario::Mixed,
                ]
            } else {
                scenarios
            };
            let options = LoadOptions {
                scenarios,
                rounds: connections.iter().map(|&n| if smoke { n.clamp(1, 16) } else { n.max(1) }).collect(),
                duration: std::time::Duration::from_secs(if smoke { 2 } else { seconds }),
                transport,
                url,
                key,
                preload: if smoke { preload.min(100) } else { preload },
                search_preload: if smoke { search_preload.min(200) } else { search_preload },
                search_stages,
                data_dir,
                assets_dir: settings.embedding.assets_dir.clone(),
                seed,
                progress: !smoke && std::io::IsTerminal::is_terminal(&std::io::stderr()),
                settings: settings.clone(),
            };
            let mut reports = Vec::new();
            for scenario in options.scenarios.clone() {
                eprintln!("scenario {scenario:?}...");
                reports.extend(crate::bench::load::run_scenario(scenario, &options).await?);
            }
            std::fs::create_dir_all(&out)?;
            let mut table = crate::bench::report::markdown(&reports);
            if embedder_baseline {
                let rates = crate::bench::embedder_baseline(&settings, 256, 128)
                    .await
                    .map_err(|e| anyhow::anyhow!(e.to_string()))?;
                table.push_str("\n### Raw embedder (in-process)\n\n| path | texts/s |\n|---|---|\n");
                for (name, rate) in rates {
                    table.push_str(&format!("| {name} | {rate:.1} |\n"));
                }
            }
            std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&reports)?)?;
            std::fs::write(out.join("report.md"), &table)?;
            crate::bench::report::plot(&reports, &out.join("latency.svg"))?;
            println!("{table}");
            eprintln!("wrote {}", out.display());
        }
        Command::BenchEmbedder { texts, concurrency } => {
            let results = crate::bench::embedder_baseline(&settings, texts, concurrency)
                .await
                .map_err(|e| anyhow::anyhow!(e.to_string()))?;
            println!("| embedder path | texts/s |\n|---|---|");
            for (name, rate) in results {
                println!("| {name} | {rate:.1} |");
            }
        }
        Command::EvalRetrieval { set, json, sweep, store } => {
            eval_retrieval(settings, &set, json.as_deref(), sweep, store).await?
        }
        Command::CrashWriter { session, writers } => crash_writer(&settings, session, writers).await?,
    }
    Ok(())
}
