//! One integration test binary: real embedded stores, the real embedding model, temp dirs.

mod bench_smoke;
mod changes;
mod crash_server;
mod durability;
mod embedder;
mod graph_conformance;
mod helpers;
mod http;
mod mcp;
mod mcp_fuzz;
mod neo4j_outage;
mod operations;
mod overload;
mod qdrant_cluster;
mod qdrant_outage;
mod recall;
mod relay;
mod replicas;
mod retrieval_quality;
mod security;
mod service_analytics;
mod service_contexts;
mod service_search;
mod service_state;
mod trust;
mod vector_conformance;
