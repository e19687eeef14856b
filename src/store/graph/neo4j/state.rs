use super::rows::*;
use super::{Neo4jGraphStore, TxResult, cypher, journal, query, rows};
use crate::domain::{AgentState, Timestamp};
use crate::error::{StoreError, StoreResult};
use crate::store::graph::{PendingIndex, StateGraph, StateIndexEntry, StateKey, StateWrite, versions};
use async_trait::async_trait;
use neo4rs::{Query, Row, Txn};
use uuid::Uuid;

fn state_index_entry(row: &Row) -> TxResult<StateIndexEntry> {
    let embedding: Vec<f64> = row.get("embedding")?;
    Ok(StateIndexEntry {
        state: state_of(row)?,
        point_id: parse_uuid(&row.get::<String>("point_id")?)?,
        embedding: embedding.into_iter().map(|v| v as f32).collect(),
    })
}

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
    async fn set_state(
        &self,
        state: &AgentState,
        expected_version: Option<i64>,
        embedding: Option<&[f32]>,
    ) -> StoreResult<StateWrite> {
        let key = StateKey::of(state);
        let point_id = key.point_id();
        let embedding: Option<Vec<f64>> = embedding.map(|e| e.iter().map(|v| f64::from(*v)).collect());
        transaction!(self, |txn| {
            let key = key.clone();
            let current = lock_state(txn, &key, state.updated_at).await?;
            versions::check_expected(expected_version, current)?;
            let stored = AgentState { version: versions::next_version(current), ..state.clone() };
            let statement = state_params(query(cypher::STATE_WRITE), &key)
                .param("value", json_text(&stored.value))
                .param("version", stored.version)
                .param("updated_at", stored.updated_at.millis())
                .param("expires_at", stored.expires_at.map(Timestamp::millis))
                .param("point_id", point_id.to_string())
                .param("embedding", embedding.clone());
            txn.run(statement).await?;
            let journal_seq = journal::record(txn, point_id, "state").await?;
            Ok(StateWrite { state: Some(stored), point_id, journal_seq })
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

    async fn delete_state(&self, key: &StateKey, expected_version: Option<i64>) -> StoreResult<StateWrite> {
        let point_id = key.point_id();
        transaction!(self, |txn| {
            let current = lock_state(txn, key, Timestamp::now()).await?;
            versions::check_delete(expected_version, current)?;
            txn.run(state_params(query(cypher::STATE_DELETE), key)).await?;
            Ok(StateWrite { state: None, point_id, journal_seq: journal::record(txn, point_id, "state").await? })
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

    async fn purge_expired_state(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<PendingIndex>> {
        transaction!(self, |txn| {
            let statement = query(cypher::STATE_PURGE_EXPIRED).param("now", now.millis()).param("limit", limit as i64);
            let mut journaled = Vec::new();
            for row in rows(txn, statement).await? {
                let session: String = row.get("session_id")?;
                let key = StateKey {
                    agent_id: row.get("agent_id")?,
                    session_id: (!session.is_empty()).then_some(session),
                    key: row.get("key")?,
                };
                let id = key.point_id();
                journaled.push(PendingIndex { seq: journal::record(txn, id, "state").await?, id });
            }
            Ok(journaled)
        })
    }

    async fn state_index_entries(&self, point_ids: &[Uuid]) -> StoreResult<Vec<StateIndexEntry>> {
        if point_ids.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, |txn| {
            let ids: Vec<String> = point_ids.iter().map(Uuid::to_string).collect();
            rows(txn, query(cypher::STATE_INDEX_ENTRIES).param("ids", ids))
                .await?
                .iter()
                .map(state_index_entry)
                .collect()
        })
    }

    async fn scan_state_index(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Vec<StateIndexEntry>> {
        read!(self, |txn| {
            let statement = query(cypher::STATE_INDEX_SCAN)
                .param("after", after.map(|a| a.to_string()).unwrap_or_default())
                .param("limit", limit as i64);
            rows(txn, statement).await?.iter().map(state_index_entry).collect()
        })
    }
}
