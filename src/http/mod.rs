//! The HTTP interface (axum): MCP Streamable HTTP at `/mcp`, the tool endpoint `POST /mcp/tool/{name}`,
//! `/health`, `/health/ready`, `/metrics` and `/openapi.json`, with body limits, timeouts and load shedding.

mod connections;
mod console;
mod events;
mod guards;
mod mcp_fast;
mod openapi;
mod routes;
mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use connections::{CountingListener, fit_open_files};
pub use guards::ClientAddr;
pub use serve::{ConnectionLimits, serve};

use std::num::NonZeroU32;

use governor::Quota;

use crate::auth::{Authenticator, Principal};
use crate::config::{ServerSettings, Settings};
use crate::mcp::McpServer;
use crate::service::ContextService;

pub type AgentRateLimiter = governor::DefaultKeyedRateLimiter<String>;

/// Requests `/auth/token` and `/health/ready` may have in flight together (at most `max_concurrency`).
const OPEN_SLOTS: usize = 32;

/// What every route and middleware shares. Each middleware and handler gets its own clone of the state per
/// request, so it is one `Arc`: cloning the fields one by one was 5% of a read's server CPU.
#[derive(Clone)]
pub struct HttpState(Arc<Shared>);

impl std::ops::Deref for HttpState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub service: Arc<ContextService>,
    pub auth: Arc<Authenticator>,
    /// Whether callers must present a bearer credential.
    pub auth_enabled: bool,
    /// The identity of every caller when authentication is off.
    pub default_principal: Principal,
    /// Free request slots; a request finding none is shed with 503 + Retry-After.
    pub slots: Arc<Semaphore>,
    /// Free slots of the unauthenticated routes that do work (`/auth/token`, `/health/ready`).
    pub open_slots: Arc<Semaphore>,
    /// Requests per agent per second.
    pub rate_limiter: Arc<AgentRateLimiter>,
    /// Failed authentications per client address.
    pub failed_auth: Arc<guards::FailedAuthLimiter>,
    pub allowed_hosts: Arc<Vec<String>>,
    pub allowed_origins: Arc<Vec<String>>,
    pub request_timeout: Duration,
    /// The largest request body the MCP endpoint reads (`server.body_limit_bytes`).
    pub mcp_body_limit: usize,
    /// The last readiness report and when it was made (see `routes::ready`).
    pub readiness: Arc<tokio::sync::Mutex<Option<(std::time::Instant, crate::service::Readiness)>>>,
}

impl HttpState {
    /// The state of the HTTP surface over a running service: built from its parts, so `http` does not
    /// depend on `app` (which builds and runs it).
    pub fn new(service: Arc<ContextService>, auth: Arc<Authenticator>, settings: &Settings) -> Self {
        let per_second = NonZeroU32::new(settings.server.rate_limit_per_second.max(1)).expect("at least one");
        let burst = NonZeroU32::new(settings.server.rate_limit_burst.max(1)).expect("at least one");
        Self(Arc::new(Shared {
            service,
            auth,
            auth_enabled: settings.auth.enabled,
            default_principal: Principal::local_trusted(&settings.identity.agent_id),
            slots: Arc::new(Semaphore::new(settings.server.max_concurrency)),
            open_slots: Arc::new(Semaphore::new(settings.server.max_concurrency.min(OPEN_SLOTS))),
            rate_limiter: Arc::new(governor::RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))),
            failed_auth: Arc::new(guards::FailedAuthLimiter::new(
                settings.server.auth_failures_per_second,
                settings.server.auth_failure_burst,
            )),
            allowed_hosts: Arc::new(settings.server.allowed_hosts.clone()),
            allowed_origins: Arc::new(settings.server.allowed_origins.clone()),
            request_timeout: Duration::from_millis(settings.server.request_timeout_ms),
            mcp_body_limit: settings.server.body_limit_bytes,
            readiness: Arc::default(),
        }))
    }

    /// Who a handler acts for when a request carries no identity: the local trusted agent without
    /// authentication, nobody with it (fails closed; the authenticate layer attaches one to every request).
    pub fn unidentified_principal(&self) -> Principal {
        if self.auth_enabled { Principal::nobody() } else { self.default_principal.clone() }
    }
}

/// The whole HTTP surface. `stop` ends MCP streams on shutdown.
pub fn router(state: HttpState, settings: &ServerSettings, stop: CancellationToken) -> Router {
    let mcp_config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_cancellation_token(stop.clone())
        .with_max_request_body_bytes(settings.body_limit_bytes)
        .with_allowed_hosts(settings.allowed_hosts.clone())
        .with_allowed_origins(settings.allowed_origins.clone())
        .enforce_origin_validation();
    let mcp_handler = McpServer::new(state.service.clone(), state.auth.clone(), state.unidentified_principal());
    let rmcp = Arc::new(StreamableHttpService::new(
        move || Ok(mcp_handler.for_connection()),
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    ));
    let mcp = {
        let state = state.clone();
        tower::service_fn(move |request| {
            let (state, rmcp) = (state.clone(), rmcp.clone());
            async move { Ok::<_, std::convert::Infallible>(mcp_fast::serve(state, rmcp, request).await) }
        })
    };

    let api = Router::new()
        .route("/mcp/tool/{name}", post(routes::call_tool))
        .nest_service("/mcp", mcp)
        .route("/metrics", get(routes::metrics))
        .route(
            "/events",
            get({
                let stop = stop.clone();
                move |state, principal, headers, query| events::events(state, principal, headers, query, stop.clone())
            }),
        )
        .layer(axum::middleware::from_fn_with_state(state.clone(), routes::authenticate))
        .layer(axum::middleware::from_fn_with_state(state.clone(), routes::shed_load));
    // Readiness probes the backends and token exchange checks a key, without authentication: they have a
    // pool of slots of their own, so a flood of them (or slow bodies) cannot take the API's slots.
    let unauthenticated = Router::new()
        .route("/health/ready", get(routes::ready))
        .route("/auth/token", post(routes::token))
        .layer(axum::middleware::from_fn_with_state(state.clone(), routes::shed_open_load));
    let open = Router::new()
        .route("/health", get(routes::health))
        .route("/openapi.json", get(routes::openapi))
        .merge(console::routes());
    api.merge(unauthenticated)
        .merge(open)
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guards::time_limit))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guards::check_host_and_origin))
        .with_state(state)
}
