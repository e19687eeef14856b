//! Agent state: set (with compare-and-set and TTL), get, list by prefix, delete, and recall by meaning.
//! State belongs to its agent. Each entry whose value carries text (`state_points::state_text`) has an
//! embedding in the graph and a point in the state collection, kept in line through the index journal.

use uuid::Uuid;

use super::{
    AgentStateKeyRequest, AgentStateList, AgentStateResponse, ContextService, DeleteAgentStateResponse,
    ListAgentStateRequest, RecallAgentStateRequest, RecallAgentStateResponse, SetAgentStateRequest, StateHit,
};
use crate::auth::{Permission, Principal};
use crate::domain::{
    AgentState, ContextFilter, ContextFilterArgs, ReadScope, Timestamp, limits, parse_identifier, parse_limit,
    parse_ttl,
};
use crate::error::{ServiceError, ServiceResult, StoreError};
use crate::store::graph::{StateKey, StateWrite};
use crate::store::vector::state_points::{state_of_point, state_point, state_text};

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
        let state = self.write_state(&state, request.expected_version).await?;
        Ok(AgentStateResponse { state })
    }

    /// Writes a state entry with its embedding (when its value carries text) and journal entry, then its
    /// point; a failed point write is left to the repair (see the module documentation of `service`).
    pub(super) async fn write_state(
        &self,
        state: &AgentState,
        expected_version: Option<i64>,
    ) -> ServiceResult<AgentState> {
        let embedding = match state_text(&state.key, &state.value) {
            Some(text) => Some(self.embed_one(&text).await?),
            None => None,
        };
        let _ordered = self.item_lock(StateKey::of(state).point_id()).lock().await;
        let write = self.graph.set_state(state, expected_version, embedding.as_deref()).await?;
        let stored = write.state.clone().ok_or_else(|| ServiceError::Internal("state write stored nothing".into()))?;
        let point = embedding.and_then(|vector| state_point(&stored, write.point_id, vector));
        self.settle_state_point(&write, point).await;
        Ok(stored)
    }

    /// Brings the point of a state write in line with it: upserted when the entry has one, else deleted.
    async fn settle_state_point(&self, write: &StateWrite, point: Option<crate::store::VectorPoint>) {
        let applied = match point {
            Some(point) => self.state_vectors.upsert(vec![point]).await,
            None => self.state_vectors.delete(&[write.point_id]).await,
        };
        match applied {
            Ok(()) => self.written(write.journal_seq),
            Err(err) => {
                tracing::warn!(point = %write.point_id, error = %err, "state point left for the journal repair")
            }
        }
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
        let _ordered = self.item_lock(key.point_id()).lock().await;
        match self.graph.delete_state(&key, request.expected_version).await {
            Ok(write) => {
                self.settle_state_point(&write, None).await;
                Ok(DeleteAgentStateResponse { key: key.key, deleted: true })
            }
            Err(StoreError::NotFound) => Err(state_not_found(&key)),
            Err(other) => Err(other.into()),
        }
    }

    /// An agent's state recalled by meaning: its entries (in one session, or all of them) prefiltered, then
    /// the nearest points, then the fuzzy rerank, as `search` does for contexts.
    pub async fn recall_agent_state(
        &self,
        principal: &Principal,
        request: RecallAgentStateRequest,
    ) -> ServiceResult<RecallAgentStateResponse> {
        principal.require(Permission::Read)?;
        let agent = principal.acting_agent(request.agent_id.as_deref())?;
        let session = request.session_id.as_deref().map(|s| parse_session(principal, s)).transpose()?;
        // State points are private to their agent. Entries without a session have session "" in their point,
        // which a caller limited to some sessions may still see (as it may read them by key).
        let sessions = principal.read_scope(&agent).sessions.map(|mut sessions| {
            sessions.push(String::new());
            sessions
        });
        let scope = ReadScope { agent_id: agent.clone(), admin: false, sessions };
        let mut filter = ContextFilter::parse(ContextFilterArgs::default(), scope, Timestamp::now())?;
        filter.agent_ids = vec![agent];
        filter.session_id = session;
        let plan = self.plan_recall(
            &request.query,
            filter,
            request.limit,
            request.candidates,
            request.fuzzy_threshold,
            request.vector_weight,
        )?;
        let ranked = self.ranked(&plan, self.state_vectors.as_ref()).await?;
        // The graph is the source of truth: each hit is read again, so an entry deleted or changed since its
        // point was written (a point write left to the repair) is dropped or shown as it is now.
        let current = futures::future::try_join_all(ranked.hits.iter().map(|hit| async move {
            let key = StateKey::of(&state_of_point(&hit.context)?);
            Ok::<_, ServiceError>(self.graph.get_state(&key).await?)
        }))
        .await?;
        let hits = ranked
            .hits
            .into_iter()
            .zip(current)
            .filter_map(|(hit, state)| state.map(|state| StateHit { state, scores: hit.scores }))
            .collect();
        Ok(RecallAgentStateResponse {
            hits,
            mode: ranked.mode,
            stages: ranked.stages,
            degraded_reason: ranked.degraded_reason,
            candidates: ranked.candidates,
        })
    }

    /// The live state entries among `point_ids` upserted to the state collection, the rest deleted (repair).
    pub(super) async fn reapply_states(&self, point_ids: &[Uuid]) -> ServiceResult<()> {
        let entries = self.graph.state_index_entries(point_ids).await?;
        let points = entries.into_iter().filter_map(|e| state_point(&e.state, e.point_id, e.embedding)).collect();
        super::maintenance::settle_points(self.state_vectors.as_ref(), point_ids, points).await
    }
}
