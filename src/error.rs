//! Errors of the store layer and the service layer, and the stable error codes users see.
//!
//! Store adapters return `StoreError`; the service turns it into `ServiceError`, whose `code()` is the
//! machine-readable contract every interface (MCP, HTTP) reports. Internal causes are logged, never leaked.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes. Clients may match on these strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Conflict,
    PayloadTooLarge,
    ResourceExhausted,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Failures of a backend (graph store, vector store, embedder).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("version conflict: expected {expected}, current {current}")]
    VersionConflict { expected: i64, current: i64 },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend failure: {0}")]
    Backend(String),
    /// An analyst query the backend refused (syntax, a write, too slow): the message is for the caller.
    #[error("query rejected: {0}")]
    InvalidQuery(String),
    /// An answer or a value past a documented size cap: the message is for the caller.
    #[error("too large: {0}")]
    TooLarge(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        match err {
            rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
            rusqlite::Error::SqliteFailure(code, _)
                if matches!(code.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                StoreError::Unavailable(err.to_string())
            }
            other => StoreError::Backend(other.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(err: tokio::task::JoinError) -> Self {
        StoreError::Backend(format!("blocking task failed: {err}"))
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(err: serde_json::Error) -> Self {
        StoreError::Backend(format!("stored JSON is malformed: {err}"))
    }
}

/// What a service call reports to its caller: a stable code plus a message fit for users.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ServiceError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ServiceError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            ServiceError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ServiceError::Conflict(_) => ErrorCode::Conflict,
            ServiceError::ResourceExhausted(_) => ErrorCode::ResourceExhausted,
            ServiceError::Unavailable(_) => ErrorCode::Unavailable,
            ServiceError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ServiceError::InvalidArgument(message.into())
    }
}

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ServiceError::NotFound("item".into()),
            StoreError::VersionConflict { expected, current } => ServiceError::Conflict(format!(
                "expected_version {expected} does not match the current version {current}"
            )),
            StoreError::Conflict(message) => ServiceError::Conflict(message),
            StoreError::InvalidQuery(message) => ServiceError::InvalidArgument(message),
            StoreError::TooLarge(message) => ServiceError::PayloadTooLarge(message),
            StoreError::Unavailable(message) => {
                tracing::warn!(%message, "backend unavailable");
                ServiceError::Unavailable("a backend is unavailable, retry later".into())
            }
            StoreError::Backend(message) => {
                tracing::error!(%message, "backend failure");
                ServiceError::Internal(message)
            }
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
pub type ServiceResult<T> = Result<T, ServiceError>;
