use super::SqliteGraphStore;
use super::rows::*;
use crate::domain::{AgentState, Timestamp};
use crate::error::StoreResult;
use crate::store::graph::{StateGraph, StateKey, versions};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

#[async_trait]
impl StateGraph for SqliteGraphStore {
    async fn set_state(&self, state: &AgentState, expected_version: Option<i64>) -> StoreResult<AgentState> {
        let state = state.clone();
        self.write(move |tx| {
            let session = state.session_id.clone().unwrap_or_default();
            let now = state.updated_at.millis();
            let current: i64 = tx
                .query_row(
                    "SELECT version FROM agent_state WHERE agent_id = ?1 AND session_id = ?2 AND key = ?3 \
                     AND (expires_at IS NULL OR expires_at > ?4)",
                    params![state.agent_id, session, state.key, now],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(0);
            versions::check_expected(expected_version, current)?;
            let stored = AgentState { version: versions::next_version(current), ..state };
            tx.execute(
                "INSERT INTO agent_state (agent_id, session_id, key, value, version, updated_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(agent_id, session_id, key) DO UPDATE SET \
                 value = excluded.value, version = excluded.version, updated_at = excluded.updated_at, \
                 expires_at = excluded.expires_at",
                params![
                    stored.agent_id,
                    session,
                    stored.key,
                    json_text(&stored.value),
                    stored.version,
                    now,
                    stored.expires_at.map(Timestamp::millis)
                ],
            )?;
            Ok(stored)
        })
        .await
    }

    async fn get_state(&self, key: &StateKey) -> StoreResult<Option<AgentState>> {
        let key = key.clone();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT agent_id, session_id, key, value, version, updated_at, expires_at FROM agent_state \
                     WHERE agent_id = ?1 AND session_id = ?2 AND key = ?3 AND (expires_at IS NULL OR expires_at > ?4)",
                )?
                .query_row(
                    params![key.agent_id, key.session_id.unwrap_or_default(), key.key, Timestamp::now().millis()],
                    state_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn list_state(
        &self,
        agent_id: &str,
        session_id: Option<&str>,
        prefix: &str,
        after_key: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AgentState>> {
        let (agent_id, session) = (agent_id.to_string(), session_id.unwrap_or("").to_string());
        let (prefix, after) = (prefix.to_string(), after_key.unwrap_or("").to_string());
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT agent_id, session_id, key, value, version, updated_at, expires_at FROM agent_state \
                 WHERE agent_id = ?1 AND session_id = ?2 AND substr(key, 1, length(?3)) = ?3 AND key > ?4 \
                 AND (expires_at IS NULL OR expires_at > ?5) ORDER BY key{}",
                limit_sql(limit)
            ))?;
            let rows = statement
                .query_map(params![agent_id, session, prefix, after, Timestamp::now().millis()], state_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn delete_state(&self, key: &StateKey, expected_version: Option<i64>) -> StoreResult<()> {
        let key = key.clone();
        self.write(move |tx| {
            let session = key.session_id.clone().unwrap_or_default();
            let current: i64 = tx
                .query_row(
                    "SELECT version FROM agent_state WHERE agent_id = ?1 AND session_id = ?2 AND key = ?3 \
                     AND (expires_at IS NULL OR expires_at > ?4)",
                    params![key.agent_id, session, key.key, Timestamp::now().millis()],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(0);
            versions::check_delete(expected_version, current)?;
            tx.execute(
                "DELETE FROM agent_state WHERE agent_id = ?1 AND session_id = ?2 AND key = ?3",
                params![key.agent_id, session, key.key],
            )?;
            Ok(())
        })
        .await
    }

    async fn scan_states(&self, after: Option<&StateKey>, limit: usize) -> StoreResult<Vec<AgentState>> {
        let after =
            after.cloned().unwrap_or(StateKey { agent_id: String::new(), session_id: None, key: String::new() });
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT agent_id, session_id, key, value, version, updated_at, expires_at FROM agent_state \
                 WHERE (agent_id, session_id, key) > (?1, ?2, ?3) ORDER BY agent_id, session_id, key{}",
                limit_sql(limit)
            ))?;
            let rows = statement
                .query_map(params![after.agent_id, after.session_id.unwrap_or_default(), after.key], state_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn purge_expired_state(&self, now: Timestamp, limit: usize) -> StoreResult<u64> {
        self.write(move |tx| {
            let purged = tx.execute(
                &format!(
                    "DELETE FROM agent_state WHERE rowid IN (SELECT rowid FROM agent_state \
                     WHERE expires_at IS NOT NULL AND expires_at <= ?1{})",
                    limit_sql(limit)
                ),
                params![now.millis()],
            )?;
            Ok(purged as u64)
        })
        .await
    }
}
