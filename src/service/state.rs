//! Agent state: set (with compare-and-set and TTL), get, list by prefix, delete. State belongs to its agent.

use super::{
    AgentStateKeyRequest, AgentStateList, AgentStateResponse, ContextService, DeleteAgentStateResponse,
    ListAgentStateRequest, SetAgentStateRequest,
};
use crate::auth::{Permission, Principal};
use crate::domain::{AgentState, Timestamp, limits, parse_identifier, parse_limit, parse_ttl};
use crate::error::{ServiceError, ServiceResult, StoreError};
use crate::store::graph::StateKey;

fn state_key(principal: &Principal, agent: Option<&str>, key: &str, session: Option<&str>) -> ServiceResult<StateKey> {
    let session_id = session.map(|s| parse_session(principal, s)).transpose()?;
    Ok(StateKey { agent_id: principal.acting_agent(agent)?, session_id, key: parse_identifier("key", key)? })
}

/// A session id the principal may use; others are `not_found`, as if they did not exist.
fn parse_session(principal: &Principal, session: &str) -> ServiceResult<String> {
    let session = parse_identifier("session_id", session)?;
    if principal.may_use_session(&session) {
        Ok(session)
    } else {
        Err(ServiceError::NotFound(format!("session '{session}'")))
    }
}

fn state_not_found(key: &StateKey) -> ServiceError {
    ServiceError::NotFound(format!("agent state '{}'", key.key))
}

impl ContextService {
    pub async fn set_agent_state(
        &self,
        principal: &Principal,
        request: SetAgentStateRequest,
    ) -> ServiceResult<AgentStateResponse> {
        principal.require(Permission::Write)?;
        let key = state_key(principal, request.agent_id.as_deref(), &request.key, request.session_id.as_deref())?;
        let size = serde_json::to_vec(&request.value).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > limits::MAX_STATE_VALUE_BYTES {
            return Err(ServiceError::PayloadTooLarge(format!(
                "value is {size} bytes of JSON; the limit is {}",
                limits::MAX_STATE_VALUE_BYTES
            )));
        }
        if request.expected_version.is_some_and(|v| v < 0) {
            return Err(ServiceError::invalid("expected_version must be 0 or more"));
        }
        let now = Timestamp::now();
        let state = AgentState {
            agent_id: key.agent_id,
            session_id: key.session_id,
            key: key.key,
            value: request.value,
            version: 0,
            updated_at: now,
            expires_at: parse_ttl(request.ttl_seconds, now)?,
        };
        let state = self.graph.set_state(&state, request.expected_version).await?;
        Ok(AgentStateResponse { state })
    }

    pub async fn get_agent_state(
        &self,
        principal: &Principal,
        request: AgentStateKeyRequest,
    ) -> ServiceResult<AgentStateResponse> {
        principal.require(Permission::Read)?;
        let key = state_key(principal, request.agent_id.as_deref(), &request.key, request.session_id.as_deref())?;
        match self.graph.get_state(&key).await? {
            Some(state) => Ok(AgentStateResponse { state }),
            None => Err(state_not_found(&key)),
        }
    }

    pub async fn list_agent_state(
        &self,
        principal: &Principal,
        request: ListAgentStateRequest,
    ) -> ServiceResult<AgentStateList> {
        principal.require(Permission::Read)?;
        let agent = principal.acting_agent(request.agent_id.as_deref())?;
        let session = request.session_id.map(|s| parse_session(principal, &s)).transpose()?;
        let prefix = request.prefix.unwrap_or_default();
        if prefix.chars().count() > limits::MAX_ID_CHARS {
            return Err(ServiceError::invalid("prefix is longer than any key"));
        }
        let limit = parse_limit(request.limit)?;
        let after = request.cursor.map(|c| parse_identifier("cursor", &c)).transpose()?;
        let mut states =
            self.graph.list_state(&agent, session.as_deref(), &prefix, after.as_deref(), limit + 1).await?;
        let next_cursor = if states.len() > limit {
            states.truncate(limit);
            states.last().map(|s| s.key.clone())
        } else {
            None
        };
        Ok(AgentStateList { states, next_cursor })
    }

    pub async fn delete_agent_state(
        &self,
        principal: &Principal,
        request: AgentStateKeyRequest,
    ) -> ServiceResult<DeleteAgentStateResponse> {
        principal.require(Permission::Write)?;
        let key = state_key(principal, request.agent_id.as_deref(), &request.key, request.session_id.as_deref())?;
        match self.graph.delete_state(&key, request.expected_version).await {
            Ok(()) => Ok(DeleteAgentStateResponse { key: key.key, deleted: true }),
            Err(StoreError::NotFound) => Err(state_not_found(&key)),
            Err(other) => Err(other.into()),
        }
    }
}
