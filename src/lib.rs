//! context-store: a graph-and-vector context store for AI agents, served over MCP.
//!
//! See ARCHITECTURE.md for the code map. The request path is one pass down and one pass up:
//! interface adapter -> `service::ContextService` -> `store` (graph, vector) and `embed`.

pub mod app;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod domain;
pub mod embed;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod mcp;
pub mod memory;
pub mod metrics;
pub mod private_files;
pub mod search;
pub mod service;
pub mod store;
pub mod tools;

/// The checkout the unit tests run from: cargo's `CARGO_MANIFEST_DIR` at run time first, since a test binary
/// reused from another clone that shares the target directory has that clone's path compiled in.
#[cfg(test)]
pub(crate) fn test_checkout() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}
