use super::SqliteGraphStore;
use super::journal;
use super::rows::*;
use crate::domain::{AgentState, Timestamp};
use crate::error::StoreResult;
use crate::store::graph::{PendingIndex, StateGraph, StateIndexEntry, StateKey, StateWrite, versions};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, params, params_from_iter};
use uuid::Uuid;

const STATE_INDEX_COLUMNS: &str =
    "agent_id, session_id, key, value, version, updated_at, expires_at, point_id, embedding";

fn state_index_entry(row: &Row<'_>) -> rusqlite::Result<StateIndexEntry> {
    Ok(StateIndexEntry {
        state: state_from_row(row)?,
        point_id: parse_uuid(&row.get::<_, String>(7)?)?,
        embedding: decode_embedding(&row.get::<_, Vec<u8>>(8)?),
    })
}

#[async_trait]
impl StateGraph for SqliteGraphStore {
    async fn set_state(
        &self,
        state: &AgentState,
        expected_version: Option<i64>,
        embedding: Option<&[f32]>,
    ) -> StoreResult<StateWrite> {
        let state = state.clone();
        let embedding = embedding.map(encode_embedding);
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
            let point_id = StateKey::of(&stored).point_id();
            tx.execute(
                "INSERT INTO agent_state (agent_id, session_id, key, value, version, updated_at, expires_at, \
                 point_id, embedding) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                 ON CONFLICT(agent_id, session_id, key) DO UPDATE SET value = excluded.value, \
                 version = excluded.version, updated_at = excluded.updated_at, expires_at = excluded.expires_at, \
                 point_id = excluded.point_id, embedding = excluded.embedding",
                params![
                    stored.agent_id,
                    session,
                    stored.key,
                    json_text(&stored.value),
                    stored.version,
                    now,
                    stored.expires_at.map(Timestamp::millis),
                    point_id.to_string(),
                    embedding
                ],
            )?;
            let journal_seq = journal::record(tx, point_id, "state")?;
            Ok(StateWrite { state: Some(stored), point_id, journal_seq })
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

    async fn delete_state(&self, key: &StateKey, expected_version: Option<i64>) -> StoreResult<StateWrite> {
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
            let point_id = key.point_id();
            Ok(StateWrite { state: None, point_id, journal_seq: journal::record(tx, point_id, "state")? })
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

    async fn purge_expired_state(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<PendingIndex>> {
        self.write(move |tx| {
            let mut statement = tx.prepare_cached(&format!(
                "DELETE FROM agent_state WHERE rowid IN (SELECT rowid FROM agent_state \
                 WHERE expires_at IS NOT NULL AND expires_at <= ?1{}) RETURNING agent_id, session_id, key",
                limit_sql(limit)
            ))?;
            let keys = statement
                .query_map(params![now.millis()], |row| {
                    let session: String = row.get(1)?;
                    Ok(StateKey {
                        agent_id: row.get(0)?,
                        session_id: (!session.is_empty()).then_some(session),
                        key: row.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(statement);
            keys.iter()
                .map(|key| {
                    let id = key.point_id();
                    Ok(PendingIndex { seq: journal::record(tx, id, "state")?, id })
                })
                .collect()
        })
        .await
    }

    async fn state_index_entries(&self, point_ids: &[Uuid]) -> StoreResult<Vec<StateIndexEntry>> {
        if point_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = point_ids.iter().map(Uuid::to_string).collect();
        self.read(move |conn| {
            let mut entries = Vec::new();
            for chunk in ids.chunks(500) {
                let sql = format!(
                    "SELECT {STATE_INDEX_COLUMNS} FROM agent_state WHERE point_id IN ({}) AND embedding IS NOT NULL",
                    placeholders(chunk.len())
                );
                let mut statement = conn.prepare_cached(&sql)?;
                let rows = statement.query_map(params_from_iter(chunk.iter()), state_index_entry)?;
                entries.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
            }
            Ok(entries)
        })
        .await
    }

    async fn scan_state_index(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Vec<StateIndexEntry>> {
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {STATE_INDEX_COLUMNS} FROM agent_state WHERE point_id > ?1 AND embedding IS NOT NULL \
                 ORDER BY point_id{}",
                limit_sql(limit)
            ))?;
            let rows = statement.query_map(params![after], state_index_entry)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}
