//! Typed settings: built-in defaults < optional TOML file < `CTX__SECTION__KEY` environment variables.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::embed::fastembed::{BatcherOptions, ModelAssets, Precision};
use crate::service::{MaintenanceOptions, ServiceOptions};
use crate::store::graph::sqlite::Synchronous;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the embedded stores keep their files.
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub embedding: EmbeddingSettings,
    pub graph: GraphSettings,
    pub vector: VectorSettings,
    pub search: SearchSettings,
    pub identity: IdentitySettings,
    pub auth: AuthSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub request_timeout_ms: u64,
    /// A client must send a request's headers within this long of starting it (or, on a kept-alive
    /// connection, of the previous answer): slow or idle connections are closed instead of held open.
    pub header_read_timeout_ms: u64,
    /// Connections open at once; past this a new one is closed on arrival.
    pub max_connections: usize,
    pub body_limit_bytes: usize,
    /// Requests served at once; more are shed with 503 + Retry-After.
    pub max_concurrency: usize,
    /// Host header values accepted on every route (DNS-rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// Origin header values accepted on every route (scheme://host:port, `:*` for any port); others get 403.
    pub allowed_origins: Vec<String>,
    /// Requests per second each agent may make (a burst of `rate_limit_burst`); more get 429.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// Failed authentications (bad bearer, bad key at /auth/token) per second per client address, with a
    /// burst of `auth_failure_burst`; past them the address gets 429 until the quota refills.
    pub auth_failures_per_second: u32,
    pub auth_failure_burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingSettings {
    /// Folder `scripts/setup` fills: lib/libonnxruntime.so and model/.
    pub assets_dir: PathBuf,
    pub sessions: usize,
    pub max_batch: usize,
    pub batch_window_us: u64,
    pub max_tokens: usize,
    pub cache_entries: u64,
    /// "int8" (the default: the quantized graph) or "fp32" (the exported graph as trained).
    pub precision: Precision,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraphSettings {
    /// "sqlite" (embedded, the default) or "neo4j".
    pub backend: String,
    /// SQLite: read connections.
    pub readers: u32,
    /// SQLite: how commits are synced.
    pub synchronous: Synchronous,
    /// How often contexts and agent state past their TTL are removed from both stores.
    pub expiry_interval_ms: u64,
    /// How often journal entries no running write will finish are looked for and repaired (an entry still
    /// pending at two looks in a row).
    pub repair_interval_ms: u64,
    pub neo4j: Neo4jSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Neo4jSettings {
    /// bolt://host:7687 (one server) or neo4j://host:7687.
    pub uri: String,
    pub user: String,
    pub password: String,
    /// None = the server's default database.
    pub database: Option<String>,
    pub max_connections: usize,
    pub fetch_size: usize,
    /// How long a call waits for a free pooled connection before failing with `unavailable`.
    pub acquire_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// How long one call (a transaction with its retries) may take before it fails with `unavailable`: a
    /// server that stops answering on an open connection is noticed after this long.
    pub call_timeout_ms: u64,
    /// Consecutive unreachable calls that open the circuit breaker, and how long it stays open.
    pub breaker_threshold: u32,
    pub breaker_cooldown_ms: u64,
}

impl Default for Neo4jSettings {
    fn default() -> Self {
        Self {
            uri: "bolt://127.0.0.1:7687".into(),
            user: "neo4j".into(),
            password: String::new(),
            database: None,
            max_connections: 32,
            fetch_size: 500,
            acquire_timeout_ms: 2000,
            connect_timeout_ms: 3000,
            call_timeout_ms: 10_000,
            breaker_threshold: 3,
            breaker_cooldown_ms: 1000,
        }
    }
}

impl Neo4jSettings {
    pub fn options(&self) -> crate::store::graph::neo4j::Neo4jOptions {
        crate::store::graph::neo4j::Neo4jOptions {
            uri: self.uri.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
            max_connections: self.max_connections,
            fetch_size: self.fetch_size,
            acquire_timeout: Duration::from_millis(self.acquire_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            breaker_threshold: self.breaker_threshold,
            breaker_cooldown: Duration::from_millis(self.breaker_cooldown_ms),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VectorSettings {
    /// "edge" (embedded qdrant-edge, the default) or "qdrant" (a Qdrant server or cluster over gRPC).
    pub backend: String,
    pub qdrant: QdrantSettings,
    /// A collection definition file; the built-in collections/contexts.json when absent.
    pub collection_file: Option<PathBuf>,
    pub flush_interval_ms: u64,
    pub optimize_interval_ms: u64,
    pub optimize_min_new_points: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QdrantSettings {
    /// gRPC URL of the server (port 6334); for a cluster, the URLs of its nodes separated by commas: calls
    /// go to them in turn, and one that does not answer is skipped for `breaker_cooldown_ms`.
    pub url: String,
    pub api_key: Option<String>,
    /// Collection name; the definition's name ("contexts") when absent.
    pub collection: Option<String>,
    /// gRPC channels kept open.
    pub channels: usize,
    pub timeout_ms: u64,
    pub breaker_threshold: u32,
    pub breaker_cooldown_ms: u64,
    /// Override the collection definition's cluster layout (`cluster` in collections/contexts.json).
    pub shard_number: Option<u32>,
    pub replication_factor: Option<u32>,
    pub write_consistency_factor: Option<u32>,
    /// "weak", "medium" (the default: a point's writes are ordered by one replica of its shard, so copies
    /// cannot end up different when two service replicas write it at once) or "strong".
    pub write_ordering: String,
    /// How long a start waits for the server to answer and the collection to be set up (a cluster electing a
    /// leader, replicas starting together) before giving up; `doctor` does not wait.
    pub startup_wait_ms: u64,
}

impl Default for QdrantSettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:6334".into(),
            api_key: None,
            collection: None,
            channels: 4,
            timeout_ms: 5000,
            breaker_threshold: 3,
            breaker_cooldown_ms: 1000,
            shard_number: None,
            replication_factor: None,
            write_consistency_factor: None,
            write_ordering: "medium".into(),
            startup_wait_ms: 120_000,
        }
    }
}

impl QdrantSettings {
    pub fn options(&self) -> crate::store::vector::qdrant::QdrantOptions {
        crate::store::vector::qdrant::QdrantOptions {
            url: self.url.clone(),
            api_key: self.api_key.clone(),
            collection: self.collection.clone(),
            channels: self.channels,
            timeout: Duration::from_millis(self.timeout_ms),
            breaker_threshold: self.breaker_threshold,
            breaker_cooldown: Duration::from_millis(self.breaker_cooldown_ms),
            cluster: crate::store::vector::ClusterSpec {
                shard_number: self.shard_number,
                replication_factor: self.replication_factor,
                write_consistency_factor: self.write_consistency_factor,
            },
            write_ordering: self.write_ordering.clone(),
            startup_wait: Duration::from_millis(self.startup_wait_ms),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSettings {
    pub cache_entries: u64,
    pub cache_ttl_ms: u64,
    /// Share of the retrieval score (vector and lexical) in the final score; the rest is fuzzy.
    pub vector_weight: f64,
    /// Share of the lexical score within the retrieval score; the rest is the vector score.
    pub lexical_weight: f64,
    pub fuzzy_fallback_scan: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HTTP callers need a bearer API key or JWT. Turning it off is allowed on loopback only.
    pub enabled: bool,
    /// HS256 signing secret; generated into `<data_dir>/jwt.secret` when absent.
    pub jwt_secret: Option<String>,
    pub audience: String,
    pub issuer: String,
    /// Longest (and default) token lifetime.
    pub token_ttl_seconds: i64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            jwt_secret: None,
            audience: "context-store".into(),
            issuer: "context-store".into(),
            token_ttl_seconds: 900,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySettings {
    /// The agent id of a local caller (stdio, or HTTP without authentication).
    pub agent_id: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            server: ServerSettings::default(),
            embedding: EmbeddingSettings::default(),
            graph: GraphSettings::default(),
            vector: VectorSettings::default(),
            search: SearchSettings::default(),
            identity: IdentitySettings::default(),
            auth: AuthSettings::default(),
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            request_timeout_ms: 30_000,
            header_read_timeout_ms: 30_000,
            max_connections: 4096,
            body_limit_bytes: 1024 * 1024,
            max_concurrency: 512,
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: vec!["http://localhost:*".into(), "http://127.0.0.1:*".into()],
            rate_limit_per_second: 200,
            rate_limit_burst: 400,
            auth_failures_per_second: 2,
            auth_failure_burst: 20,
        }
    }
}

impl Default for EmbeddingSettings {
    fn default() -> Self {
        Self {
            assets_dir: PathBuf::from("assets"),
            sessions: 2,
            max_batch: 32,
            batch_window_us: 2000,
            max_tokens: 256,
            cache_entries: 20_000,
            precision: Precision::default(),
        }
    }
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            backend: "sqlite".into(),
            readers: 8,
            synchronous: Synchronous::Full,
            expiry_interval_ms: 60_000,
            repair_interval_ms: 5_000,
            neo4j: Neo4jSettings::default(),
        }
    }
}

impl Default for VectorSettings {
    fn default() -> Self {
        Self {
            backend: "edge".into(),
            qdrant: QdrantSettings::default(),
            collection_file: None,
            flush_interval_ms: 1000,
            optimize_interval_ms: 30_000,
            optimize_min_new_points: 1000,
        }
    }
}

/// The retrieval share of the final score, the rest fuzzy (chosen on the retrieval suite, BENCHMARKS.md,
/// "Retrieval quality").
pub const DEFAULT_VECTOR_WEIGHT: f64 = 0.85;
/// The lexical share of the retrieval score (chosen on the same suite).
pub const DEFAULT_LEXICAL_WEIGHT: f64 = 0.5;

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            cache_entries: 10_000,
            cache_ttl_ms: 30_000,
            vector_weight: DEFAULT_VECTOR_WEIGHT,
            lexical_weight: DEFAULT_LEXICAL_WEIGHT,
            fuzzy_fallback_scan: 2000,
        }
    }
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self { agent_id: "local-agent".into() }
    }
}

impl Settings {
    /// Defaults, then the TOML file (if given), then `CTX__...` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment.merge(Env::prefixed("CTX__").split("__")).extract().map_err(Box::new)
    }

    pub fn auth_settings(&self) -> crate::auth::AuthSettings<'_> {
        crate::auth::AuthSettings {
            data_dir: &self.data_dir,
            jwt_secret: self.auth.jwt_secret.as_deref(),
            audience: &self.auth.audience,
            issuer: &self.auth.issuer,
            token_ttl_seconds: self.auth.token_ttl_seconds,
        }
    }

    /// The model files `scripts/setup` installed, at the configured precision.
    pub fn model_assets(&self) -> ModelAssets {
        ModelAssets::in_dir(&self.embedding.assets_dir, self.embedding.precision)
    }

    pub fn batcher_options(&self) -> BatcherOptions {
        BatcherOptions {
            sessions: self.embedding.sessions,
            max_batch: self.embedding.max_batch,
            batch_window: Duration::from_micros(self.embedding.batch_window_us),
            max_tokens: self.embedding.max_tokens,
        }
    }

    pub fn service_options(&self) -> ServiceOptions {
        ServiceOptions {
            search_cache_entries: self.search.cache_entries,
            search_cache_ttl: Duration::from_millis(self.search.cache_ttl_ms),
            default_vector_weight: self.search.vector_weight,
            default_lexical_weight: self.search.lexical_weight,
            fuzzy_fallback_scan: self.search.fuzzy_fallback_scan,
        }
    }

    pub fn maintenance_options(&self) -> MaintenanceOptions {
        MaintenanceOptions {
            flush_interval: Duration::from_millis(self.vector.flush_interval_ms),
            optimize_interval: Duration::from_millis(self.vector.optimize_interval_ms),
            optimize_min_new_points: self.vector.optimize_min_new_points,
            expiry_interval: Duration::from_millis(self.graph.expiry_interval_ms),
            repair_interval: Duration::from_millis(self.graph.repair_interval_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bind_loopback() {
        assert_eq!(Settings::default().server.host, "127.0.0.1");
    }

    /// docker-compose.yml configures the service through `CTX__` variables: every one must name a setting
    /// (unknown keys are refused) and carry a value of the right type.
    #[test]
    #[allow(clippy::result_large_err)]
    fn every_setting_docker_compose_sets_exists() {
        let compose = include_str!("../docker-compose.yml");
        let variables: Vec<(String, String)> = compose
            .lines()
            .filter_map(|line| line.trim().split_once(": "))
            .filter(|(key, _)| key.starts_with("CTX__"))
            .map(|(key, value)| {
                let value = value.trim().trim_matches('\'');
                // `${NAME:-default}` and `${NAME:?message}` are filled in by Compose: stand-ins here.
                let value = if value.starts_with("${") { "stand-in" } else { value };
                (key.to_string(), value.to_string())
            })
            .collect();
        assert!(variables.len() >= 5, "the compose file's settings were found: {variables:?}");
        figment::Jail::expect_with(|jail| {
            for (key, value) in &variables {
                jail.set_env(key, value);
            }
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.graph.backend, "neo4j");
            assert_eq!(settings.vector.backend, "qdrant");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_overrides_nested_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CTX__SERVER__PORT", "9999");
            jail.set_env("CTX__EMBEDDING__SESSIONS", "3");
            let settings = Settings::load(None).expect("settings load");
            assert_eq!(settings.server.port, 9999);
            assert_eq!(settings.embedding.sessions, 3);
            Ok(())
        });
    }
}
