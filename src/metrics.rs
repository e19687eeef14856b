//! Prometheus metrics of the whole service, in one registry passed around as a value.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub tool_requests: IntCounterVec,
    pub tool_latency: HistogramVec,
    pub embed_cache_hits: IntCounter,
    pub embed_cache_misses: IntCounter,
    pub embed_batch_size: Histogram,
    pub embed_batch_latency: Histogram,
    pub search_cache_hits: IntCounter,
    pub search_cache_misses: IntCounter,
    /// Approximate searches that came back short and were run again exactly.
    pub search_exact_fallbacks: IntCounter,
    /// Searches whose lexical stage failed and were ranked without it.
    pub search_stage_failures: IntCounter,
    /// MCP `tools/call` requests answered by the direct path (not rmcp's per-request service).
    pub mcp_direct_calls: IntCounter,
    pub backend_latency: HistogramVec,
    pub items: IntGaugeVec,
    pub active_connections: IntGauge,
    /// Connections closed on arrival because `server.max_connections` were open.
    pub connections_refused: IntCounter,
    /// Connection pool occupancy per backend: state = max | in_use.
    pub pool_connections: IntGaugeVec,
    /// 1 while a backend is reported down by the readiness check or its circuit breaker.
    pub backend_up: IntGaugeVec,
    /// Analyst queries (query_graph) running now.
    pub analyst_queries_running: IntGauge,
    /// Journal entries repaired while serving (writes that did not finish both stores).
    pub journal_repairs: IntCounter,
}

/// Adds one to a gauge for as long as it lives.
pub struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts something in flight on a gauge: `let _running = gauge.guard();`.
pub trait GaugeExt {
    fn guard(&self) -> GaugeGuard;
}

impl GaugeExt for IntGauge {
    fn guard(&self) -> GaugeGuard {
        self.inc();
        GaugeGuard(self.clone())
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, collector: T) -> T {
    registry.register(Box::new(collector.clone())).expect("metric names are unique");
    collector
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("context_store".into()), None).expect("valid prefix");
        let latency_buckets =
            vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        Self {
            tool_requests: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("tool_requests_total", "Tool calls by tool and status"),
                    &["tool", "status"],
                )
                .unwrap(),
            ),
            tool_latency: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("tool_latency_seconds", "Tool call latency").buckets(latency_buckets.clone()),
                    &["tool"],
                )
                .unwrap(),
            ),
            embed_cache_hits: register(
                &registry,
                IntCounter::new("embed_cache_hits_total", "Embedding cache hits").unwrap(),
            ),
            embed_cache_misses: register(
                &registry,
                IntCounter::new("embed_cache_misses_total", "Embedding cache misses").unwrap(),
            ),
            embed_batch_size: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("embed_batch_size", "Texts per model call")
                        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
                )
                .unwrap(),
            ),
            embed_batch_latency: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("embed_batch_latency_seconds", "Model call latency")
                        .buckets(latency_buckets.clone()),
                )
                .unwrap(),
            ),
            search_cache_hits: register(
                &registry,
                IntCounter::new("search_cache_hits_total", "Search result cache hits").unwrap(),
            ),
            search_cache_misses: register(
                &registry,
                IntCounter::new("search_cache_misses_total", "Search result cache misses").unwrap(),
            ),
            search_exact_fallbacks: register(
                &registry,
                IntCounter::new(
                    "search_exact_fallbacks_total",
                    "Vector searches that returned fewer hits than asked through the index and were run exactly",
                )
                .unwrap(),
            ),
            mcp_direct_calls: register(
                &registry,
                IntCounter::new(
                    "mcp_direct_tool_calls_total",
                    "MCP tools/call requests answered directly rather than through rmcp's per-request service",
                )
                .unwrap(),
            ),
            search_stage_failures: register(
                &registry,
                IntCounter::new(
                    "search_stage_failures_total",
                    "Searches whose lexical stage failed and were ranked without it",
                )
                .unwrap(),
            ),
            backend_latency: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("backend_latency_seconds", "Backend operation latency").buckets(latency_buckets),
                    &["backend", "op"],
                )
                .unwrap(),
            ),
            items: register(
                &registry,
                IntGaugeVec::new(Opts::new("items", "Stored items by kind"), &["kind"]).unwrap(),
            ),
            active_connections: register(
                &registry,
                IntGauge::new("active_connections", "Open HTTP connections").unwrap(),
            ),
            connections_refused: register(
                &registry,
                IntCounter::new("connections_refused_total", "Connections closed on arrival: too many open").unwrap(),
            ),
            pool_connections: register(
                &registry,
                IntGaugeVec::new(Opts::new("pool_connections", "Connection pool size and use"), &["backend", "state"])
                    .unwrap(),
            ),
            backend_up: register(
                &registry,
                IntGaugeVec::new(Opts::new("backend_up", "Whether a backend answers (1) or not (0)"), &["backend"])
                    .unwrap(),
            ),
            analyst_queries_running: register(
                &registry,
                IntGauge::new("analyst_queries_running", "Analyst queries (query_graph) running").unwrap(),
            ),
            journal_repairs: register(
                &registry,
                IntCounter::new("journal_repairs_total", "Journal entries repaired while serving").unwrap(),
            ),
            registry,
        }
    }

    /// Hit ratio of the embedding cache, 0 when unused.
    pub fn embed_cache_ratio(&self) -> f64 {
        let hits = self.embed_cache_hits.get() as f64;
        let total = hits + self.embed_cache_misses.get() as f64;
        if total == 0.0 { 0.0 } else { hits / total }
    }

    /// The registry in Prometheus text format.
    /// The text exposition; `with_items` adds the store-wide item counts (for admins: they count data a
    /// scoped caller may not see).
    pub fn render(&self, with_items: bool) -> String {
        let mut families = self.registry.gather();
        if !with_items {
            families.retain(|family| family.name() != "context_store_items");
        }
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&families, &mut buffer).expect("text encoding cannot fail");
        let mut text = String::from_utf8(buffer).expect("prometheus text is UTF-8");
        text.push_str(&format!(
            "# HELP context_store_embed_cache_hit_ratio Embedding cache hit ratio\n\
             # TYPE context_store_embed_cache_hit_ratio gauge\ncontext_store_embed_cache_hit_ratio {}\n",
            self.embed_cache_ratio()
        ));
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
