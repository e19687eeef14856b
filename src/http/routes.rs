//! Route handlers: each parses, calls the service (through the tool catalogue), converts.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::HttpState;
use crate::auth::Principal;
use crate::error::ErrorCode;
use crate::mcp::timed_call;
use crate::tools::ToolError;

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

fn error_response(status: StatusCode, error: &ToolError) -> Response {
    let mut response = (status, Json(error.to_json())).into_response();
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// `POST /mcp/tool/{name}`: JSON arguments in, the tool's structured result out.
pub async fn call_tool(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    axum::Extension(principal): axum::Extension<Principal>,
    body: Bytes,
) -> Response {
    let arguments: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(value @ (Value::Object(_) | Value::Null)) => value,
            Ok(_) | Err(_) => {
                let error = ToolError {
                    code: ErrorCode::InvalidArgument,
                    message: "the body must be a JSON object".into(),
                };
                return error_response(StatusCode::BAD_REQUEST, &error);
            }
        }
    };
    match timed_call(&state.service, &principal, &name, arguments).await {
        Ok(value) => Json(value).into_response(),
        Err(error) => {
            // Arguments that do not fit the tool's schema are well-formed JSON the server cannot process.
            let status = if error.code == ErrorCode::InvalidArgument
                && error.message.starts_with("invalid arguments")
            {
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

pub async fn ready(State(state): State<HttpState>) -> Response {
    match state.service.ready().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": err.to_string()})),
        )
            .into_response(),
    }
}

pub async fn metrics(State(state): State<HttpState>) -> Response {
    let _ = state.service.refresh_item_metrics().await;
    let body = state.service.metrics().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

pub async fn openapi() -> Json<Value> {
    Json(super::openapi::document())
}

/// Attaches the caller's identity. Until authentication is configured every caller is the local
/// trusted principal from settings.
pub async fn attach_principal(
    State(state): State<HttpState>,
    mut request: Request,
    next: Next,
) -> Response {
    request
        .extensions_mut()
        .insert(state.default_principal.clone());
    next.run(request).await
}

/// Sheds load instead of queueing without bound: no free slot means 503 with Retry-After at once.
pub async fn shed_load(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    match state.slots.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            let error = ToolError {
                code: ErrorCode::Unavailable,
                message: "the server is at capacity; retry shortly".into(),
            };
            error_response(StatusCode::SERVICE_UNAVAILABLE, &error)
        }
    }
}
