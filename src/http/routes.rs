//! Route handlers: each parses, calls the service (through the tool catalogue), converts.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use std::sync::Arc;

use super::HttpState;
use super::guards::{ClientAddr, DeclaredJson, client_ip, not_json, too_many_failures};
use crate::auth::{AuthFailure, Principal};
use crate::error::ErrorCode;
use crate::mcp::timed_call;
use crate::tools::{AsJsonBytes, ToolError};

pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// How long a readiness report answers `/health/ready` before the backends are checked again.
const READY_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

const CHALLENGE: &str = "Bearer realm=\"context-store\"";
const INVALID_TOKEN_CHALLENGE: &str = "Bearer realm=\"context-store\", error=\"invalid_token\"";

pub(super) fn error_response(status: StatusCode, error: &ToolError) -> Response {
    let mut response = (status, Json(error.to_json())).into_response();
    match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::UNAUTHORIZED => {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
        }
        _ => {}
    }
    response
}

/// `POST /mcp/tool/{name}`: JSON arguments in, the tool's structured result out.
pub async fn call_tool(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    axum::Extension(principal): axum::Extension<Principal>,
    DeclaredJson(json): DeclaredJson,
    body: Bytes,
) -> Response {
    if !body.is_empty() && !json {
        return not_json();
    }
    let arguments: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(value @ Value::Object(_)) => value,
            Ok(_) | Err(_) => {
                let error =
                    ToolError { code: ErrorCode::InvalidArgument, message: "the body must be a JSON object".into() };
                return error_response(StatusCode::BAD_REQUEST, &error);
            }
        }
    };
    match timed_call::<AsJsonBytes>(&state.service, &state.auth, &principal, &name, arguments).await {
        Ok(body) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
        Err(error) => {
            // Arguments that do not fit the tool's schema are well-formed JSON the server cannot process.
            let status = if error.code == ErrorCode::InvalidArgument && error.message.starts_with("invalid arguments") {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                status_of(error.code)
            };
            error_response(status, &error)
        }
    }
}

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /health/ready`. The checks run the model and reach every backend, and the route needs no key: one
/// check runs at a time and its report is reused for `READY_REUSE`.
pub async fn ready(State(state): State<HttpState>) -> Response {
    let report = {
        let mut last = state.readiness.lock().await;
        match &*last {
            Some((at, report)) if at.elapsed() < READY_REUSE => report.clone(),
            _ => {
                let report = state.service.ready().await;
                *last = Some((std::time::Instant::now(), report.clone()));
                report
            }
        }
    };
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({"status": if report.ready { "ready" } else { "unavailable" }, "backends": report.backends});
    (status, Json(body)).into_response()
}

/// Prometheus text; with authentication on, the caller needs the query (analyst) permission, and only
/// admins get the store-wide item counts (`items{kind}`), as in `get_metrics`.
pub async fn metrics(
    State(state): State<HttpState>,
    axum::Extension(principal): axum::Extension<Principal>,
) -> Response {
    match state.service.prometheus_text(&principal).await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
        Err(err) => {
            let error = crate::tools::ToolError::from(err);
            error_response(status_of(error.code), &error)
        }
    }
}

pub async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

/// `POST /auth/token`: an API key in, a short-lived JWT out. A wrong key counts as a failed authentication.
pub async fn token(
    State(state): State<HttpState>,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<ClientAddr>>>,
    DeclaredJson(json): DeclaredJson,
    body: Bytes,
) -> Response {
    if !body.is_empty() && !json {
        return not_json();
    }
    let ip = connect_info.map(|info| info.0.0.0.ip());
    let request = match serde_json::from_slice::<crate::auth::TokenRequest>(&body) {
        Ok(request) => request,
        Err(err) => {
            let error = ToolError { code: ErrorCode::InvalidArgument, message: format!("invalid arguments: {err}") };
            return error_response(StatusCode::UNPROCESSABLE_ENTITY, &error);
        }
    };
    if let Some(wait) = ip.and_then(|ip| state.failed_auth.blocked_for(ip, Some(&request.api_key))) {
        return too_many_failures(wait);
    }
    let key = request.api_key.clone();
    match state.auth.exchange(request).await {
        Ok(token) => {
            state.failed_auth.succeeded(&key);
            Json(token).into_response()
        }
        Err(err) => {
            let error = ToolError::from(err);
            if error.code == ErrorCode::Unauthenticated
                && let Some(wait) = ip.and_then(|ip| state.failed_auth.failed(ip))
            {
                return too_many_failures(wait);
            }
            error_response(status_of(error.code), &error)
        }
    }
}

/// Establishes the caller's identity from `Authorization: Bearer <API key or JWT>` (or the local trusted
/// principal when authentication is off), then applies the per-agent rate limit. An address that presented
/// too many invalid credentials is turned away (429) before its credential is checked.
pub async fn authenticate(State(state): State<HttpState>, mut request: Request, next: Next) -> Response {
    let ip = client_ip(&request);
    let principal = if state.auth_enabled {
        let bearer = crate::auth::bearer_of(request.headers());
        let outcome = match state.auth.recently_verified(bearer.as_deref()) {
            Some(principal) => Ok((principal, None)),
            None => {
                if let Some(wait) = ip.and_then(|ip| state.failed_auth.blocked_for(ip, bearer.as_deref())) {
                    return too_many_failures(wait);
                }
                state.auth.authenticate(bearer.as_deref()).await.map(|principal| (principal, bearer))
            }
        };
        match outcome {
            Ok((principal, checked)) => {
                if let Some(credential) = checked {
                    state.failed_auth.succeeded(&credential);
                }
                principal
            }
            Err(AuthFailure::Unavailable(reason)) => {
                tracing::warn!(%reason, "credential not checked: the key store is unavailable");
                let error = ToolError {
                    code: ErrorCode::Unavailable,
                    message: "the key store is unavailable, retry later".into(),
                };
                let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, &error);
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
            Err(failure) => {
                if failure == AuthFailure::Invalid
                    && let Some(wait) = ip.and_then(|ip| state.failed_auth.failed(ip))
                {
                    return too_many_failures(wait);
                }
                let (message, challenge) = match failure {
                    AuthFailure::Missing => ("send Authorization: Bearer <API key or token>", CHALLENGE),
                    _ => ("the credential is invalid, expired or revoked", INVALID_TOKEN_CHALLENGE),
                };
                let error = ToolError { code: ErrorCode::Unauthenticated, message: message.into() };
                let mut response = error_response(StatusCode::UNAUTHORIZED, &error);
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
                return response;
            }
        }
    } else {
        state.default_principal.clone()
    };
    if let Err(not_until) = state.rate_limiter.check_key(&principal.agent_id) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        let error =
            ToolError { code: ErrorCode::ResourceExhausted, message: "rate limit exceeded; retry shortly".into() };
        let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, &error);
        let seconds = wait.as_secs() + 1;
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Sheds load instead of queueing without bound: no free slot means 503 with Retry-After at once.
pub async fn shed_load(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    shed(&state.slots, request, next).await
}

/// The most an unauthenticated request's body may hold (an API key exchange is well under it).
const OPEN_BODY_BYTES: usize = 16 * 1024;
/// How long an unauthenticated request's body may take to arrive.
const OPEN_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The same for the unauthenticated routes that do work, with their own slots. The body is read before a
/// slot is taken, within `OPEN_BODY_DEADLINE`: a client that sends it slowly holds its own connection, not
/// one of the slots that readiness probes and token exchanges share.
pub async fn shed_open_load(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > OPEN_BODY_BYTES as u64) {
        let message = format!("the body is over {OPEN_BODY_BYTES} bytes");
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, &ToolError { code: ErrorCode::PayloadTooLarge, message });
    }
    let body = match tokio::time::timeout(OPEN_BODY_DEADLINE, axum::body::to_bytes(body, OPEN_BODY_BYTES)).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            let message = format!("the body broke off or is over {OPEN_BODY_BYTES} bytes");
            let error = ToolError { code: ErrorCode::InvalidArgument, message };
            return error_response(StatusCode::BAD_REQUEST, &error);
        }
        Err(_) => {
            let message = format!("the body took longer than {} s to arrive", OPEN_BODY_DEADLINE.as_secs());
            let error = ToolError { code: ErrorCode::InvalidArgument, message };
            return error_response(StatusCode::REQUEST_TIMEOUT, &error);
        }
    };
    shed(&state.open_slots, Request::from_parts(parts, axum::body::Body::from(body)), next).await
}

async fn shed(slots: &Arc<tokio::sync::Semaphore>, request: Request, next: Next) -> Response {
    match slots.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            let error =
                ToolError { code: ErrorCode::Unavailable, message: "the server is at capacity; retry shortly".into() };
            error_response(StatusCode::SERVICE_UNAVAILABLE, &error)
        }
    }
}
