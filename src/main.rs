//! The `context-store` binary: parses the command line, loads settings and calls into the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = context_store::cli::Cli::parse();
    context_store::cli::init_tracing();
    context_store::cli::run(cli).await
}
