use super::rows::*;
use super::{Neo4jGraphStore, TxResult, cypher, query, rows};
use crate::domain::{AgentState, Timestamp};
use crate::error::{StoreError, StoreResult};
use crate::store::graph::{StateGraph, StateKey, versions};
use async_trait::async_trait;
use neo4rs::{Query, Txn};

pub(super) fn state_params(statement: Query, key: &StateKey) -> Query {
    statement
        .param("agent_id", key.agent_id.clone())
        .param("session_id", key.session_id.clone().unwrap_or_default())
        .param("key", key.key.clone())
}

/// The live version of a locked state entry (0 when absent or expired).
pub(super) async fn lock_state(txn: &mut Txn, key: &StateKey, now: Timestamp) -> TxResult<i64> {
    let found = rows(txn, state_params(query(cypher::STATE_LOCK), key)).await?;
    let row = found.first().ok_or_else(|| StoreError::Backend("state lock returned no row".into()))?;
    let version: i64 = row.get("version")?;
    let expires_at: Option<i64> = row.get("expires_at")?;
    Ok(if expires_at.is_some_and(|at| at <= now.millis()) { 0 } else { version })
}

#[async_trait]
impl StateGraph for Neo4jGraphStore {
    async fn set_state(&self, state: &AgentState, expected_version: Option<i64>) -> StoreResult<AgentState> {
        let key =
            StateKey { agent_id: state.agent_id.clone(), session_id: state.session_id.clone(), key: state.key.clone() };
        transaction!(self, |txn| {
            let key = key.clone();
            let current = lock_state(txn, &key, state.updated_at).await?;
            versions::check_expected(expected_version, current)?;
            let stored = AgentState { version: versions::next_version(current), ..state.clone() };
            let statement = state_params(query(cypher::STATE_WRITE), &key)
                .param("value", json_text(&stored.value))
                .param("version", stored.version)
                .param("updated_at", stored.updated_at.millis())
                .param("expires_at", stored.expires_at.map(Timestamp::millis));
            txn.run(statement).await?;
            Ok(stored)
        })
    }

    async fn get_state(&self, key: &StateKey) -> StoreResult<Option<AgentState>> {
        match &self.lookups {
            Some(lookups) => lookups.state(key).await,
            None => read!(self, |txn| {
                let statement = state_params(query(cypher::STATE_GET), key).param("now", Timestamp::now().millis());
                rows(txn, statement).await?.first().map(state_of).transpose()
            }),
        }
    }

    async fn list_state(
        &self,
        agent_id: &str,
        session_id: Option<&str>,
        prefix: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AgentState>> {
        read!(self, |txn| {
            let statement = query(cypher::STATE_LIST)
                .param("agent_id", agent_id)
                .param("session_id", session_id.unwrap_or(""))
                .param("prefix", prefix)
                .param("after", after_key.unwrap_or(""))
                .param("now", Timestamp::now().millis())
                .param("limit", limit as i64);
            rows(txn, statement).await?.iter().map(state_of).collect()
        })
    }

    async fn delete_state(&self, key: &StateKey, expected_version: Option<i64>) -> StoreResult<()> {
        transaction!(self, |txn| {
            let current = lock_state(txn, key, Timestamp::now()).await?;
            versions::check_delete(expected_version, current)?;
            txn.run(state_params(query(cypher::STATE_DELETE), key)).await?;
            Ok(())
        })
    }

    async fn scan_states(&self, after: Option<&StateKey>, limit: usize) -> StoreResult<Vec<AgentState>> {
        let after =
            after.cloned().unwrap_or(StateKey { agent_id: String::new(), session_id: None, key: String::new() });
        read!(self, |txn| {
            let statement = state_params(query(cypher::STATE_SCAN), &after).param("limit", limit as i64);
            rows(txn, statement).await?.iter().map(state_of).collect()
        })
    }

    async fn purge_expired_state(&self, now: Timestamp, limit: usize) -> StoreResult<u64> {
        transaction!(self, |txn| {
            let statement = query(cypher::STATE_PURGE_EXPIRED).param("now", now.millis()).param("limit", limit as i64);
            let found = rows(txn, statement).await?;
            Ok(found.first().map(|row| row.get::<i64>("purged")).transpose()?.unwrap_or(0) as u64)
        })
    }
}
