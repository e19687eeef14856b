//! Sessions: create, get, list.

use uuid::Uuid;

use super::{ContextService, CreateSessionRequest, GetSessionRequest, ListSessionsRequest, SessionList};
use crate::auth::{Permission, Principal};
use crate::domain::{Session, Timestamp, limits, parse_identifier, parse_limit, parse_metadata};
use crate::error::{ServiceError, ServiceResult};

impl ContextService {
    pub async fn create_session(&self, principal: &Principal, request: CreateSessionRequest) -> ServiceResult<Session> {
        principal.require(Permission::Write)?;
        if principal.sessions.is_some() && !principal.permissions.admin {
            return Err(ServiceError::PermissionDenied(
                "a caller limited to some sessions cannot create sessions".into(),
            ));
        }
        let created_by = principal.acting_agent(request.agent_id.as_deref())?;
        let id = match request.id {
            Some(id) => parse_identifier("id", &id)?,
            None => Uuid::now_v7().to_string(),
        };
        if request.purpose.chars().count() > limits::MAX_PURPOSE_CHARS {
            return Err(ServiceError::invalid(format!(
                "purpose must be at most {} characters",
                limits::MAX_PURPOSE_CHARS
            )));
        }
        let session = Session {
            id,
            purpose: request.purpose,
            metadata: parse_metadata(request.metadata.as_ref())?,
            created_by,
            created_at: Timestamp::now(),
        };
        self.graph.create_session(&session).await?;
        Ok(session)
    }

    pub async fn get_session(&self, principal: &Principal, request: GetSessionRequest) -> ServiceResult<Session> {
        principal.require(Permission::Read)?;
        let id = parse_identifier("session_id", &request.session_id)?;
        let session = if principal.may_use_session(&id) { self.graph.get_session(&id).await? } else { None };
        session.ok_or_else(|| ServiceError::NotFound(format!("session '{id}'")))
    }

    pub async fn list_sessions(
        &self,
        principal: &Principal,
        request: ListSessionsRequest,
    ) -> ServiceResult<SessionList> {
        principal.require(Permission::Read)?;
        let limit = parse_limit(request.limit)?;
        let after = request.cursor.map(|c| parse_identifier("cursor", &c)).transpose()?;
        let only = principal.read_scope(&principal.agent_id).sessions;
        let mut sessions = self.graph.list_sessions(after.as_deref(), limit + 1, only.as_deref()).await?;
        let next_cursor = if sessions.len() > limit {
            sessions.truncate(limit);
            sessions.last().map(|s| s.id.clone())
        } else {
            None
        };
        Ok(SessionList { sessions, next_cursor })
    }
}
