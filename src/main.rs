//! The `context-store` binary: parses the command line, loads settings and calls into the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use context_store::app::Core;
use context_store::config::Settings;

#[derive(Parser)]
#[command(name = "context-store", version, about = "A graph-and-vector context store for AI agents, served over MCP")]
struct Cli {
    /// A TOML settings file (CTX__SECTION__KEY environment variables override it).
    #[arg(long, global = true, env = "CTX_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuild the vector side from the graph.
    Reindex,
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Reindex => {
            let core = Core::start(&settings).await?;
            let done = core
                .service
                .reindex(500, |n| eprintln!("reindexed {n}"))
                .await
                .map_err(|e| anyhow::anyhow!(e.to_string()))?;
            eprintln!("reindex complete: {done} contexts");
            core.shutdown().await;
        }
    }
    Ok(())
}
