//! The load harness: N concurrent connections, each its own keep-alive HTTP client with its own agent
//! identity, driving real MCP Streamable HTTP (JSON-RPC `tools/call`) or the HTTP tool endpoint.
//! It starts the server itself (the same binary, a temp data dir, one server per scenario) or targets a URL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use super::Sentences;
use crate::auth::{NewKey, Permissions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Sessions, stores, list 50, fuzzy-thresholded search over 1000 contexts, agent state.
    Agent,
    /// store_context with unique texts: embedding cost.
    Write,
    /// get_context, list_contexts, get_agent_state.
    Read,
    /// search over a large preloaded set with cached query embeddings (the vector stage and rerank).
    Search,
    /// search over a large preloaded set with new queries (each embedded).
    SearchNew,
    /// 80% reads, 20% writes.
    Mixed,
    /// GET /health through the same clients: the no-op baseline.
    Noop,
    /// JSON-RPC `ping` over MCP Streamable HTTP (POST /mcp, authenticated): what the MCP transport costs a
    /// request before any tool runs.
    Ping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// JSON-RPC tools/call over MCP Streamable HTTP (POST /mcp).
    Mcp,
    /// POST /mcp/tool/{name}.
    Http,
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub scenarios: Vec<Scenario>,
    /// Connection counts measured in turn against the same server (and preload); one report each.
    pub rounds: Vec<usize>,
    pub duration: Duration,
    pub transport: Transport,
    /// Target an existing server instead of starting one (then `key` must be an admin key).
    pub url: Option<String>,
    pub key: Option<String>,
    /// Contexts preloaded for the agent, read and mixed scenarios.
    pub preload: usize,
    /// Contexts preloaded for the search scenario.
    pub search_preload: usize,
    /// A data directory for the started server that outlives the run: the search preload is imported
    /// into it once, and later runs with the same directory (and preload) start on it.
    pub data_dir: Option<PathBuf>,
    /// The search stages the search scenarios ask for (absent: the service's default, all three).
    pub search_stages: Option<Vec<crate::service::Stage>>,
    pub assets_dir: PathBuf,
    pub seed: u64,
    pub progress: bool,
    /// The settings the started servers inherit (through the environment); API keys for them are created
    /// where these say (Neo4j, or the server's data dir).
    pub settings: crate::config::Settings,
}

/// Latency and outcome of one kind of operation in one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    pub op: String,
    pub ops: u64,
    pub errors: u64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// (percentile, ms) points for the latency plot.
    pub curve: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: Scenario,
    pub transport: Transport,
    pub connections: usize,
    pub seconds: f64,
    pub preloaded: usize,
    /// All operations together, then each kind.
    pub total: OpReport,
    pub ops: Vec<OpReport>,
    pub error_samples: Vec<String>,
    pub server_peak_rss_mb: Option<f64>,
    pub ready_seconds: Option<f64>,
    /// Search scenario on a server the harness started: recall@10 of the vector stage (HNSW as the
    /// server left it) against exact search, over 100 new queries.
    pub recall_at_10: Option<f64>,
    /// Points covered by HNSW / all points, when recall was measured.
    pub indexed_fraction: Option<f64>,
    /// Search at scale: seconds the import of the preload took (the stopped server's data directory).
    pub import_seconds: Option<f64>,
    /// Search at scale: seconds from the server being ready until HNSW covered 95% of the points.
    pub index_seconds: Option<f64>,
    /// The server's resident memory once ready (and indexed), before the load started.
    pub server_start_rss_mb: Option<f64>,
    /// Server CPU time (user + system) during the round per operation, in milliseconds.
    pub server_cpu_ms_per_op: Option<f64>,
}

/// A server the harness started: killed when dropped.
struct Server {
    child: std::process::Child,
    _dir: DataDir,
}

/// Where a server the harness started keeps its data: a temporary directory, or one given with
/// `--data-dir` that outlives the run (a later run on it skips the preload).
enum DataDir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &std::path::Path {
        match self {
            DataDir::Temporary(dir) => dir.path(),
            DataDir::Kept(path) => path,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGTERM, then wait: the server flushes its stores before exiting.
    fn stop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }

    fn peak_rss_mb(&self) -> Option<f64> {
        self.status_mb("VmHWM:")
    }

    /// CPU seconds (user + system) the server has used so far.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the command name (which is in parentheses and may hold spaces); utime and stime are
        // the 14th and 15th fields of the line, in clock ticks (100 per second on Linux).
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }

    fn rss_mb(&self) -> Option<f64> {
        self.status_mb("VmRSS:")
    }

    /// A memory line of the server's `/proc/<pid>/status`, in MB.
    fn status_mb(&self, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

/// The target: base URL, one bearer per connection, an admin bearer for set-up.
struct Target {
    base: String,
    bearers: Vec<String>,
    admin: String,
    server: Option<Server>,
    ready_seconds: Option<f64>,
    /// Contexts imported into the data directory before the server started (search at scale).
    bulk_loaded: Option<Vec<String>>,
    import_seconds: Option<f64>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_target(options: &LoadOptions, scenario: Scenario) -> anyhow::Result<Target> {
    if let Some(url) = &options.url {
        let admin = options.key.clone().ok_or_else(|| anyhow::anyhow!("--url needs --key (an admin key)"))?;
        return Ok(Target {
            base: url.trim_end_matches('/').to_string(),
            bearers: vec![admin.clone(); options.connections()],
            admin,
            server: None,
            ready_seconds: None,
            bulk_loaded: None,
            import_seconds: None,
        });
    }
    let dir = match &options.data_dir {
        Some(path) => {
            std::fs::create_dir_all(path)?;
            DataDir::Kept(path.clone())
        }
        None => DataDir::Temporary(tempfile::tempdir()?),
    };
    let already_loaded = dir.path().join("vectors").exists();
    let server_settings = crate::config::Settings { data_dir: dir.path().to_path_buf(), ..options.settings.clone() };
    let keys = crate::app::open_key_store(&server_settings).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let mut bearers = Vec::with_capacity(options.connections());
    for index in 0..options.connections() {
        let new = NewKey {
            agent_id: format!("bench-agent-{index}"),
            agent_type: "bench".into(),
            permissions: Permissions { read: true, write: true, query: false, admin: false },
            sessions: None,
        };
        bearers.push(keys.create(&new).await.map_err(|e| anyhow::anyhow!(e.to_string()))?.1);
    }
    let admin_key = NewKey {
        agent_id: "bench-admin".into(),
        agent_type: "bench".into(),
        permissions: Permissions::all(),
        sessions: None,
    };
    let admin = keys.create(&admin_key).await.map_err(|e| anyhow::anyhow!(e.to_string()))?.1;
    drop(keys);
    let (bulk_loaded, import_seconds) =
        if matches!(scenario, Scenario::Search | Scenario::SearchNew) && options.search_preload > 0 {
            let (dir, assets, count) = (dir.path(), &options.assets_dir, options.search_preload);
            if already_loaded {
                super::preload::check_kept(dir, options.seed, count)?;
                (Some(super::preload::preloaded_ids(assets, options.seed, count)?), None)
            } else {
                let (ids, seconds) =
                    super::preload::bulk_preload(dir, assets, options.seed, count, options.progress).await?;
                super::preload::mark_kept(dir, options.seed, count)?;
                (Some(ids), Some(seconds))
            }
        } else {
            (None, None)
        };
    let port = free_port()?;
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path)?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .arg("serve")
        .env("CTX__DATA_DIR", dir.path())
        .env("CTX__SERVER__PORT", port.to_string())
        .env("CTX__EMBEDDING__ASSETS_DIR", &options.assets_dir)
        .env("CTX__SERVER__RATE_LIMIT_PER_SECOND", "1000000")
        .env("CTX__SERVER__RATE_LIMIT_BURST", "1000000")
        .env("CTX__SERVER__MAX_CONCURRENCY", (options.connections() * 4).max(64).to_string())
        // The embedded store logs when its lexical term counts are ready (searches are measured after).
        .env("RUST_LOG", "warn,context_store::store::vector::edge=info")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    if matches!(scenario, Scenario::Search | Scenario::SearchNew) {
        // Measure the search path itself: no result cache (query embeddings are still cached).
        command.env("CTX__SEARCH__CACHE_ENTRIES", "0");
    }
    let started = Instant::now();
    let child = command.spawn()?;
    let mut server = Server { child, _dir: dir };
    let base = format!("http://127.0.0.1:{port}");
    let probe = reqwest::Client::new();
    let ready = loop {
        if let Some(status) = server.child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let error = log.split("Stack backtrace:").next().unwrap_or_default().trim();
            anyhow::bail!("the server exited before it was ready ({status}):\n{error}");
        }
        if let Ok(response) = probe.get(format!("{base}/health/ready")).send().await
            && response.status().is_success()
        {
            break started.elapsed().as_secs_f64();
        }
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the server did not become ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if bulk_loaded.is_some() {
        // Until the stores have counted their lexical terms (a background scan at start, one line each from
        // the contexts' and the agent state's store), searches walk every term and the scan takes a core:
        // the measured rounds start after both.
        let counted =
            || std::fs::read_to_string(&log_path).unwrap_or_default().matches("lexical terms counted").count();
        while counted() < 2 && started.elapsed() < Duration::from_secs(180) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(Target { base, bearers, admin, server: Some(server), ready_seconds: Some(ready), bulk_loaded, import_seconds })
}

/// The MCP protocol version the load generator speaks (sent as `MCP-Protocol-Version`).
const MCP_PROTOCOL_VERSION: &str = "2025-06-18";

/// One connection: its own client (one keep-alive connection), its own identity.
#[derive(Clone)]
struct Connection {
    http: reqwest::Client,
    base: String,
    bearer: String,
    transport: Transport,
    next_id: Arc<AtomicU64>,
}

impl Connection {
    fn new(base: &str, bearer: &str, transport: Transport) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client builds");
        Self {
            http,
            base: base.to_string(),
            bearer: bearer.to_string(),
            transport,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Sends one tool call; the answer's status and body, or the transport failure.
    async fn send(&self, tool: &str, arguments: Value) -> Result<(u16, axum::body::Bytes), String> {
        let request = match self.transport {
            Transport::Http => self.http.post(format!("{}/mcp/tool/{tool}", self.base)).json(&arguments),
            Transport::Mcp => self.mcp_request("tools/call", Some(json!({"name": tool, "arguments": arguments}))),
        };
        let response = request.bearer_auth(&self.bearer).send().await.map_err(|e| format!("transport: {e}"))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| format!("body: {e}"))?;
        Ok((status, body))
    }

    /// A JSON-RPC request to POST /mcp with the headers Streamable HTTP asks for (not yet authenticated).
    fn mcp_request(&self, method: &str, params: Option<Value>) -> reqwest::RequestBuilder {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"jsonrpc": "2.0", "id": id, "method": method});
        if let Some(params) = params {
            message["params"] = params;
        }
        self.http
            .post(format!("{}/mcp", self.base))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", MCP_PROTOCOL_VERSION)
            .json(&message)
    }

    /// Calls a tool and returns its result; `Err` carries the error code or transport failure.
    async fn call(&self, tool: &str, arguments: Value) -> Result<Value, String> {
        let (status, body) = self.send(tool, arguments).await?;
        let body: Value = serde_json::from_slice(&body).map_err(|e| format!("body: {e}"))?;
        tool_result(self.transport, status, body)
    }

    /// Calls a tool during measurement: the answer must be a success and well-formed JSON, but it is not
    /// built into a document the harness would throw away (the load generator shares the server's cores).
    async fn check(&self, tool: &str, arguments: Value) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Reply {
            error: Option<serde::de::IgnoredAny>,
            result: Option<ReplyResult>,
        }
        #[derive(serde::Deserialize)]
        struct ReplyResult {
            #[serde(rename = "isError", default)]
            is_error: bool,
        }
        let (status, body) = self.send(tool, arguments).await?;
        let well_formed = match self.transport {
            Transport::Http => serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok(),
            Transport::Mcp => serde_json::from_slice::<Reply>(&body)
                .is_ok_and(|reply| reply.error.is_none() && reply.result.is_some_and(|r| !r.is_error)),
        };
        if (200..300).contains(&status) && well_formed {
            return Ok(());
        }
        // Failures are rare: read them in full for the error code.
        let body: Value = serde_json::from_slice(&body).map_err(|e| format!("{status} body: {e}"))?;
        tool_result(self.transport, status, body).map(|_| ())
    }

    /// An MCP `ping`: the answer must be a JSON-RPC result.
    async fn ping(&self) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Pong {
            result: Option<serde::de::IgnoredAny>,
        }
        let response = self
            .mcp_request("ping", None)
            .bearer_auth(&self.bearer)
            .send()
            .await
            .map_err(|e| format!("transport: {e}"))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| format!("body: {e}"))?;
        match serde_json::from_slice::<Pong>(&body) {
            Ok(Pong { result: Some(_) }) if status.is_success() => Ok(()),
            _ => Err(format!("{status} {}", String::from_utf8_lossy(&body))),
        }
    }

    async fn health(&self) -> Result<(), String> {
        let response = self.http.get(format!("{}/health", self.base)).send().await.map_err(|e| e.to_string())?;
        if response.status().is_success() { Ok(()) } else { Err(response.status().to_string()) }
    }
}

/// A tool call's result from its status and JSON body, or its error code.
fn tool_result(transport: Transport, status: u16, body: Value) -> Result<Value, String> {
    match transport {
        Transport::Http if (200..300).contains(&status) => Ok(body),
        Transport::Http => Err(format!("{status} {}", body["error"]["code"].as_str().unwrap_or("?"))),
        Transport::Mcp => {
            if !(200..300).contains(&status) {
                return Err(format!("{status} {body}"));
            }
            if let Some(error) = body.get("error") {
                return Err(format!("json-rpc {error}"));
            }
            let result = &body["result"];
            if result["isError"] == json!(true) {
                Err(result["structuredContent"]["error"]["code"].as_str().unwrap_or("?").to_string())
            } else {
                Ok(result["structuredContent"].clone())
            }
        }
    }
}

/// What the scenarios operate on, created before measuring.
#[derive(Clone, Default)]
struct Fixture {
    sessions: Vec<String>,
    context_ids: Vec<String>,
    warm_queries: Vec<String>,
    index_seconds: Option<f64>,
    search_stages: Option<Vec<crate::service::Stage>>,
}

impl Fixture {
    /// The search scenarios' request for `query`.
    fn search(&self, query: &str) -> Value {
        let mut request = json!({"query": query, "limit": 10});
        if let Some(stages) = &self.search_stages {
            request["stages"] = json!(stages);
        }
        request
    }
}

async fn preload(
    admin: &Connection,
    sessions: &[String],
    count: usize,
    seed: u64,
    progress: bool,
) -> anyhow::Result<Vec<String>> {
    let bar = progress_bar(progress, count as u64, "preloading contexts");
    let next = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(count)));
    let writers: Vec<_> = (0..32)
        .map(|writer| {
            let (admin, next, ids, bar) = (admin.clone(), next.clone(), ids.clone(), bar.clone());
            let sessions = sessions.to_vec();
            tokio::spawn(async move {
                let mut sentences = Sentences::new(seed.wrapping_mul(1000).wrapping_add(writer));
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= count {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let body = json!({"session_id": sessions[n % sessions.len()],
                                      "content": sentences.unique_sentence(n as u64),
                                      "tags": [format!("t{}", n % 10)], "agent_id": format!("bench-agent-{}", n % 8)});
                    let stored =
                        admin.call("store_context", body).await.map_err(|e| anyhow::anyhow!("preload: {e}"))?;
                    ids.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(stored["context"]["id"].as_str().unwrap_or_default().to_string());
                    bar.inc(1);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    bar.finish_and_clear();
    let ids = std::mem::take(&mut *ids.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(ids)
}

pub(super) fn progress_bar(enabled: bool, length: u64, message: &'static str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(length);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>22} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}")
            .expect("valid template"),
    );
    bar.set_message(message);
    bar
}

/// Waits until the vector index covers most points (the server optimizes in the background), at most ten
/// minutes plus a second per 500 points; returns the seconds waited.
async fn wait_for_index(admin: &Connection, points: usize, progress: bool) -> f64 {
    let bar = progress_bar(progress, 100, "building HNSW index");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(600 + points as u64 / 500) {
        let metrics = admin.http.get(format!("{}/metrics", admin.base)).bearer_auth(&admin.bearer).send().await.ok();
        let text = match metrics {
            Some(response) => response.text().await.unwrap_or_default(),
            None => String::new(),
        };
        let gauge = |kind: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("context_store_items{{kind=\"{kind}\"}}")))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (indexed, total) = (gauge("indexed_vectors"), gauge("vectors"));
        if total > 0.0 {
            bar.set_position((100.0 * indexed / total) as u64);
            if indexed >= 0.95 * total {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    bar.finish_and_clear();
    started.elapsed().as_secs_f64()
}

async fn prepare(scenario: Scenario, target: &Target, options: &LoadOptions) -> anyhow::Result<Fixture> {
    let admin = Connection::new(&target.base, &target.admin, Transport::Http);
    if matches!(scenario, Scenario::Noop | Scenario::Ping) {
        return Ok(Fixture::default());
    }
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut sessions: Vec<String> =
        (0..(options.connections() / 8).max(1)).map(|i| format!("bench-{run}-{i}")).collect();
    if target.bulk_loaded.is_some() {
        sessions = (0..super::preload::SESSIONS).map(super::preload::session_id).collect();
    }
    for session in sessions.iter().filter(|_| target.bulk_loaded.is_none()) {
        admin
            .call("create_session", json!({"id": session, "purpose": "benchmark"}))
            .await
            .map_err(|e| anyhow::anyhow!("create_session: {e}"))?;
    }
    let count = match scenario {
        Scenario::Search | Scenario::SearchNew => options.search_preload,
        Scenario::Write => 0,
        _ => options.preload,
    };
    let context_ids = match &target.bulk_loaded {
        Some(ids) => ids.clone(),
        None => preload(&admin, &sessions, count, options.seed, options.progress).await?,
    };
    let index_seconds = if matches!(scenario, Scenario::Search | Scenario::SearchNew) && count >= 5_000 {
        Some(wait_for_index(&admin, count, options.progress).await)
    } else {
        None
    };
    // Each agent has a state entry to read.
    for index in 0..options.connections() {
        let body = json!({"key": "profile", "value": {"n": index}, "agent_id": format!("bench-agent-{index}")});
        admin.call("set_agent_state", body).await.map_err(|e| anyhow::anyhow!("set_agent_state: {e}"))?;
    }
    let mut queries = Sentences::new(options.seed ^ 0xfeed);
    let warm_queries: Vec<String> = (0..50).map(|_| queries.next_sentence()).collect();
    if scenario == Scenario::Search {
        for query in &warm_queries {
            admin
                .call("search_context", json!({"query": query, "limit": 10}))
                .await
                .map_err(|e| anyhow::anyhow!("warm: {e}"))?;
        }
    }
    let search_stages = options.search_stages.clone();
    Ok(Fixture { sessions, context_ids, warm_queries, index_seconds, search_stages })
}

/// Per-connection recording.
struct Recorder {
    per_op: BTreeMap<&'static str, (Histogram<u64>, u64)>,
    error_samples: Vec<String>,
}

impl Recorder {
    fn new() -> Self {
        Self { per_op: BTreeMap::new(), error_samples: Vec::new() }
    }

    fn record(&mut self, op: &'static str, elapsed: Duration, outcome: &Result<(), String>) {
        let entry = self
            .per_op
            .entry(op)
            .or_insert_with(|| (Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"), 0));
        let _ = entry.0.record((elapsed.as_micros() as u64).max(1));
        if let Err(err) = outcome {
            entry.1 += 1;
            if self.error_samples.len() < 5 {
                self.error_samples.push(format!("{op}: {err}"));
            }
        }
    }
}

/// One operation of a scenario, chosen by the connection's random stream.
async fn step(
    scenario: Scenario,
    connection: &Connection,
    agent: &str,
    fixture: &Fixture,
    rng: &mut fastrand::Rng,
    sentences: &mut Sentences,
    unique: u64,
) -> (&'static str, Result<(), String>) {
    match scenario {
        Scenario::Noop => return ("health", connection.health().await),
        Scenario::Ping => return ("ping", connection.ping().await),
        _ => {}
    }
    let session = &fixture.sessions[rng.usize(..fixture.sessions.len())];
    let id_index = rng.usize(..fixture.context_ids.len().max(1));
    let any_id = || fixture.context_ids.get(id_index).cloned().unwrap_or_default();
    let store =
        |sentences: &mut Sentences| json!({"session_id": session, "content": sentences.unique_sentence(unique)});
    let roll = rng.u32(..100);
    let (op, arguments) = match scenario {
        Scenario::Noop | Scenario::Ping => unreachable!("handled above"),
        Scenario::Write => ("store_context", store(sentences)),
        Scenario::Agent => match roll {
            0..15 => ("store_context", store(sentences)),
            15..40 => (
                "search_context",
                json!({"query": sentences.next_sentence(), "session_id": session, "fuzzy_threshold": 0.3, "limit": 10}),
            ),
            40..60 => ("list_contexts", json!({"session_id": session, "limit": 50})),
            60..80 => ("set_agent_state", json!({"key": format!("step-{}", roll % 4), "value": {"at": roll}})),
            _ => ("get_agent_state", json!({"key": "profile", "agent_id": agent})),
        },
        Scenario::Read => match roll {
            0..40 => ("get_context", json!({"id": any_id()})),
            40..70 => ("list_contexts", json!({"session_id": session, "limit": 20})),
            _ => ("get_agent_state", json!({"key": "profile", "agent_id": agent})),
        },
        Scenario::Search => {
            let query = &fixture.warm_queries[rng.usize(..fixture.warm_queries.len())];
            ("search (cached embedding)", fixture.search(query))
        }
        Scenario::SearchNew => {
            let query = format!("{} {}", sentences.next_sentence(), rng.u32(..1000));
            ("search (new query)", fixture.search(&query))
        }
        Scenario::Mixed => match roll {
            0..30 => ("get_context", json!({"id": any_id()})),
            30..55 => {
                ("search_context", json!({"query": sentences.next_sentence(), "session_id": session, "limit": 10}))
            }
            55..80 => ("list_contexts", json!({"session_id": session, "limit": 20})),
            80..95 => ("store_context", store(sentences)),
            _ => ("set_agent_state", json!({"key": "mixed", "value": roll})),
        },
    };
    let tool = if op.starts_with("search") { "search_context" } else { op };
    (op, connection.check(tool, arguments).await)
}

fn op_report(op: &str, histogram: &Histogram<u64>, errors: u64, seconds: f64) -> OpReport {
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    OpReport {
        op: op.to_string(),
        ops: histogram.len(),
        errors,
        throughput: histogram.len() as f64 / seconds,
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
        curve: [0.5, 0.75, 0.9, 0.95, 0.99, 0.999].iter().map(|q| (q * 100.0, ms(*q))).collect(),
    }
}

impl LoadOptions {
    /// The most connections any round opens: the keys, sessions and state entries prepared for them.
    pub fn connections(&self) -> usize {
        self.rounds.iter().copied().max().unwrap_or(1)
    }
}

/// What one round of load measured.
struct Round {
    connections: usize,
    cpu_ms_per_op: Option<f64>,
    seconds: f64,
    total: OpReport,
    ops: Vec<OpReport>,
    error_samples: Vec<String>,
}

/// Runs one scenario against its own server (or the given URL), one round per connection count.
pub async fn run_scenario(scenario: Scenario, options: &LoadOptions) -> anyhow::Result<Vec<ScenarioReport>> {
    let target = start_target(options, scenario).await?;
    let fixture = Arc::new(prepare(scenario, &target, options).await?);
    let server_start_rss_mb = target.server.as_ref().and_then(Server::rss_mb);
    let mut rounds = Vec::new();
    for &connections in &options.rounds {
        rounds.push(measure(scenario, &target, &fixture, options, connections).await?);
    }
    let server_peak_rss_mb = target.server.as_ref().and_then(Server::peak_rss_mb);
    let mut target = target;
    let (recall_at_10, indexed_fraction) = match (scenario, target.server.as_mut()) {
        (Scenario::Search | Scenario::SearchNew, Some(server)) => {
            server.stop();
            let (recall, indexed) = vector_recall(server._dir.path(), options).await?;
            (Some(recall), Some(indexed))
        }
        _ => (None, None),
    };
    Ok(rounds
        .into_iter()
        .map(|round| ScenarioReport {
            scenario,
            transport: options.transport,
            connections: round.connections,
            seconds: round.seconds,
            preloaded: fixture.context_ids.len(),
            total: round.total,
            ops: round.ops,
            error_samples: round.error_samples,
            server_peak_rss_mb,
            ready_seconds: target.ready_seconds,
            recall_at_10,
            indexed_fraction,
            import_seconds: target.import_seconds,
            index_seconds: fixture.index_seconds,
            server_start_rss_mb,
            server_cpu_ms_per_op: round.cpu_ms_per_op,
        })
        .collect())
}

/// One round: `connections` concurrent connections for the configured duration.
async fn measure(
    scenario: Scenario,
    target: &Target,
    fixture: &Arc<Fixture>,
    options: &LoadOptions,
    connections: usize,
) -> anyhow::Result<Round> {
    let cpu_before = target.server.as_ref().and_then(Server::cpu_seconds);
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(options.progress, options.duration.as_secs().max(1), "measuring");
    let deadline = tokio::time::Instant::now() + options.duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|index| {
            let connection = Connection::new(&target.base, &target.bearers[index], options.transport);
            let (fixture, done) = (fixture.clone(), done.clone());
            let seed = options.seed.wrapping_add(index as u64);
            tokio::spawn(async move {
                let agent = format!("bench-agent-{index}");
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut sentences = Sentences::new(seed ^ 0xabc);
                let mut recorder = Recorder::new();
                // Unique across connections: this connection's index plus a multiple of their number.
                let mut unique = 1_000_000 + index as u64;
                while tokio::time::Instant::now() < deadline {
                    let began = Instant::now();
                    let (op, outcome) =
                        step(scenario, &connection, &agent, &fixture, &mut rng, &mut sentences, unique).await;
                    unique += connections as u64;
                    recorder.record(op, began.elapsed(), &outcome);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                recorder
            })
        })
        .collect();
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                bar.inc(1);
            }
        })
    };
    let mut merged: BTreeMap<&'static str, (Histogram<u64>, u64)> = BTreeMap::new();
    let mut error_samples = Vec::new();
    for task in tasks {
        let recorder = task.await?;
        for (op, (histogram, errors)) in recorder.per_op {
            let entry = merged.entry(op).or_insert_with(|| (Histogram::new_from(&histogram), 0));
            entry.0.add(&histogram).expect("same bounds");
            entry.1 += errors;
        }
        error_samples.extend(recorder.error_samples);
    }
    ticker.abort();
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let mut total = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
    let mut total_errors = 0;
    let ops: Vec<OpReport> = merged
        .iter()
        .map(|(op, (histogram, errors))| {
            total.add(histogram).expect("same bounds");
            total_errors += errors;
            op_report(op, histogram, *errors, seconds)
        })
        .collect();
    error_samples.truncate(10);
    let total = op_report("all", &total, total_errors, seconds);
    let cpu_after = target.server.as_ref().and_then(Server::cpu_seconds);
    let cpu_ms_per_op = cpu_before
        .zip(cpu_after)
        .filter(|_| total.ops > 0)
        .map(|(before, after)| 1000.0 * (after - before) / total.ops as f64);
    Ok(Round { connections, cpu_ms_per_op, seconds, total, ops, error_samples })
}

/// Recall@10 of HNSW against exact search on the stopped server's vector store, over new queries.
async fn vector_recall(data_dir: &std::path::Path, options: &LoadOptions) -> anyhow::Result<(f64, f64)> {
    use crate::domain::{ContextFilter, ContextFilterArgs, ReadScope, Timestamp};
    use crate::embed::Embedder;
    use crate::store::VectorStore;
    use crate::store::vector::edge::EdgeVectorStore;

    // The definition the server ran with (its search parameters decide the approximate search).
    let spec = crate::app::collection_spec(&options.settings).map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let store =
        EdgeVectorStore::open(&data_dir.join("vectors"), &spec).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let total = store.count().await.map_err(|e| anyhow::anyhow!(e.to_string()))?.max(1);
    let indexed = store.indexed_vectors() as f64 / total as f64;
    let assets = crate::embed::fastembed::ModelAssets::in_dir(&options.assets_dir, Default::default());
    let batcher = crate::embed::fastembed::BatcherOptions {
        sessions: 1,
        max_batch: 32,
        batch_window: Duration::from_millis(1),
        max_tokens: 256,
    };
    let model = crate::embed::FastEmbedder::start(&assets, batcher, Arc::new(crate::metrics::Metrics::new()))
        .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let mut sentences = Sentences::new(options.seed ^ 0x5eed);
    let queries: Vec<String> = (0..100).map(|_| sentences.next_sentence()).collect();
    let vectors = model.embed(queries).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let scope = ReadScope { agent_id: "bench".into(), admin: true, sessions: None };
    let filter = ContextFilter::parse(ContextFilterArgs::default(), scope, Timestamp::now())
        .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let (mut found, mut expected) = (0usize, 0usize);
    for vector in vectors {
        let exact =
            store.search(vector.clone(), &filter, 10, true).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
        let approximate = store.search(vector, &filter, 10, false).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
        expected += exact.len();
        found += exact.iter().filter(|e| approximate.iter().any(|a| a.context.id == e.context.id)).count();
    }
    Ok((found as f64 / expected.max(1) as f64, indexed))
}
