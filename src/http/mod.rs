//! The HTTP interface (axum): MCP Streamable HTTP at `/mcp`, the tool endpoint `POST /mcp/tool/{name}`,
//! `/health`, `/health/ready`, `/metrics` and `/openapi.json`, with body limits, timeouts and load shedding.

mod connections;
mod openapi;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

pub use connections::CountingListener;

use crate::auth::Principal;
use crate::config::ServerSettings;
use crate::mcp::McpServer;
use crate::service::ContextService;

#[derive(Clone)]
pub struct HttpState {
    pub service: Arc<ContextService>,
    /// The identity of callers until authentication is configured.
    pub default_principal: Principal,
    /// Free request slots; a request finding none is shed with 503 + Retry-After.
    pub slots: Arc<Semaphore>,
}

/// The whole HTTP surface. `stop` ends MCP streams on shutdown.
pub fn router(state: HttpState, settings: &ServerSettings, stop: CancellationToken) -> Router {
    let mcp_config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_cancellation_token(stop)
        .with_max_request_body_bytes(settings.body_limit_bytes)
        .with_allowed_hosts(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ]);
    let mcp_handler = McpServer::new(state.service.clone(), state.default_principal.clone());
    let mcp = StreamableHttpService::new(
        move || Ok(mcp_handler.clone()),
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    );

    let api = Router::new()
        .route("/mcp/tool/{name}", post(routes::call_tool))
        .nest_service("/mcp", mcp)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::shed_load,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::attach_principal,
        ));
    let operations = Router::new()
        .route("/health", get(routes::health))
        .route("/health/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.json", get(routes::openapi));
    api.merge(operations)
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(settings.request_timeout_ms),
        ))
        .with_state(state)
}
