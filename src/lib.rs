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
