//! `GET /events`: the change feed (`service::changes`) as server-sent events, for clients without MCP.
//! Query: `session_id` and/or `context_id` narrow it; the caller's read scope always applies. Each event is
//! `event: stored|updated|deleted|linked`, `id: <seq>`, `data: <the change as JSON>`; a subscriber that fell
//! behind gets `event: missed` with `{"missed": n}` and goes on. The stream ends when the server stops.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::HttpState;
use super::routes::error_response;
use crate::auth::{CredentialWatch, Permission, Principal};
use crate::error::ErrorCode;
use crate::service::changes::{ChangeEvent, Received};
use crate::tools::ToolError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    session_id: Option<String>,
    context_id: Option<String>,
}

fn refused(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    error_response(status, &ToolError { code, message: message.into() })
}

pub async fn events(
    State(state): State<HttpState>,
    axum::Extension(principal): axum::Extension<Principal>,
    headers: axum::http::HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    stop: CancellationToken,
) -> Response {
    let Ok(Query(query)) = query else {
        return refused(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, "query: session_id, context_id");
    };
    if let Err(err) = principal.require(Permission::Read) {
        let error = ToolError::from(err);
        return error_response(super::routes::status_of(error.code), &error);
    }
    let context = match query.context_id.as_deref().map(uuid::Uuid::parse_str) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return refused(StatusCode::BAD_REQUEST, ErrorCode::InvalidArgument, "context_id is not a UUID");
        }
    };
    let scope = principal.read_scope(&principal.agent_id);
    if let Some(session) = &query.session_id
        && !scope.may_see_session(session)
    {
        // As everywhere, a session outside the caller's scope is not found (it may or may not exist).
        return refused(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such session");
    }
    let subscriber = match state.service.changes().subscribe(&principal) {
        Ok(subscriber) => subscriber,
        Err(err) => {
            let error = ToolError::from(err);
            return error_response(super::routes::status_of(error.code), &error);
        }
    };
    let session = query.session_id;
    let watch = state
        .auth_enabled
        .then(|| crate::auth::bearer_of(&headers))
        .flatten()
        .map(|bearer| CredentialWatch::new(state.auth.clone(), bearer));
    let stream = futures::stream::unfold(
        (subscriber, scope, session, context, stop, watch),
        |(mut subscriber, mut scope, session, context, stop, mut watch)| async move {
            let wanted = |change: &ChangeEvent| change.concerns(session.as_deref(), context);
            let received = tokio::select! {
                received = subscriber.next_checked(&mut scope, &mut watch, wanted) => received?,
                _ = stop.cancelled() => return None,
            };
            let event = match received {
                Received::Event(change) => Event::default()
                    .event(change.kind.as_str())
                    .id(change.seq.to_string())
                    .json_data(change.as_ref())
                    .ok()?,
                Received::Missed(missed) => {
                    Event::default().event("missed").json_data(serde_json::json!({"missed": missed})).ok()?
                }
            };
            Some((Ok::<_, Infallible>(event), (subscriber, scope, session, context, stop, watch)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
