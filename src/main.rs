//! The `context-store` binary: parses the command line, loads settings and calls into the library.

use clap::Parser;

/// Rust's allocations go to mimalloc (thread-local free lists); C and C++ libraries (SQLite, ONNX Runtime)
/// keep glibc's malloc, with its arenas capped by `limit_arenas`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    context_store::memory::limit_arenas();
    let cli = context_store::cli::Cli::parse();
    context_store::cli::init_tracing();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(context_store::cli::run(cli))
}
