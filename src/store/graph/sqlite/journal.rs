use super::SqliteGraphStore;
use super::rows::*;
use crate::domain::{Context, Timestamp};
use crate::error::StoreResult;
use crate::store::graph::{IndexEntry, JournalGraph, PendingIndex};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, params, params_from_iter};
use uuid::Uuid;

pub(super) fn record(tx: &Transaction<'_>, id: Uuid, op: &str) -> rusqlite::Result<i64> {
    tx.execute(
        "INSERT INTO index_journal (item_id, op, created_at) VALUES (?1, ?2, ?3)",
        params![id.to_string(), op, Timestamp::now().millis()],
    )?;
    Ok(tx.last_insert_rowid())
}

#[async_trait]
impl JournalGraph for SqliteGraphStore {
    async fn purge_context(&self, id: Uuid) -> StoreResult<()> {
        self.write(move |tx| {
            let id = id.to_string();
            let deleted = tx
                .query_row("SELECT deleted FROM contexts WHERE id = ?1", params![id], |row| row.get::<_, i64>(0))
                .optional()?;
            if deleted != Some(1) {
                // Live (a delete undone since) or gone: nothing of it is to be removed.
                return Ok(());
            }
            tx.execute("DELETE FROM context_tags WHERE context_id = ?1", params![id])?;
            tx.execute("DELETE FROM context_versions WHERE context_id = ?1", params![id])?;
            tx.execute("DELETE FROM relations WHERE from_id = ?1 OR to_id = ?1", params![id])?;
            tx.execute("DELETE FROM context_recalls WHERE context_id = ?1", params![id])?;
            tx.execute("DELETE FROM contexts WHERE id = ?1 AND deleted = 1", params![id])?;
            Ok(())
        })
        .await
    }

    async fn rollback_insert(&self, id: Uuid) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute("DELETE FROM context_tags WHERE context_id = ?1", params![id.to_string()])?;
            tx.execute("DELETE FROM contexts WHERE id = ?1", params![id.to_string()])?;
            Ok(())
        })
        .await
    }

    async fn rollback_update(&self, previous: &Context, previous_embedding: &[f32]) -> StoreResult<()> {
        let (previous, previous_embedding) = (previous.clone(), previous_embedding.to_vec());
        self.write(move |tx| {
            write_context(tx, &previous, Some(&previous_embedding))?;
            tx.execute(
                "DELETE FROM context_versions WHERE context_id = ?1 AND version = ?2",
                params![previous.id.to_string(), previous.version],
            )?;
            Ok(())
        })
        .await
    }

    async fn rollback_delete(&self, id: Uuid) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute("UPDATE contexts SET deleted = 0 WHERE id = ?1", params![id.to_string()])?;
            Ok(())
        })
        .await
    }

    async fn expired_contexts(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<Uuid>> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT id FROM contexts WHERE expires_at IS NOT NULL AND expires_at <= ?1 AND deleted = 0{}",
                limit_sql(limit)
            ))?;
            let rows = statement.query_map(params![now.millis()], |row| parse_uuid(&row.get::<_, String>(0)?))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn pending_index(&self, limit: usize) -> StoreResult<Vec<PendingIndex>> {
        self.read(move |conn| {
            let mut statement = conn
                .prepare_cached(&format!("SELECT seq, item_id FROM index_journal ORDER BY seq{}", limit_sql(limit)))?;
            let rows = statement.query_map([], |row| {
                Ok(PendingIndex { seq: row.get(0)?, id: parse_uuid(&row.get::<_, String>(1)?)? })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn clear_pending(&self, seqs: &[i64]) -> StoreResult<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs = seqs.to_vec();
        self.write(move |tx| {
            for chunk in seqs.chunks(500) {
                let sql = format!("DELETE FROM index_journal WHERE seq IN ({})", placeholders(chunk.len()));
                tx.execute(&sql, params_from_iter(chunk.iter()))?;
            }
            Ok(())
        })
        .await
    }

    async fn index_entries(&self, ids: &[Uuid]) -> StoreResult<Vec<IndexEntry>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        self.read(move |conn| Ok(live_by_ids(conn, ", c.embedding", &ids, index_entry_from_row)?)).await
    }

    async fn scan_index_entries(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Vec<IndexEntry>> {
        let after = after.map(|a| a.to_string()).unwrap_or_default();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {CONTEXT_COLUMNS}, c.embedding FROM contexts c WHERE c.deleted = 0 AND c.id > ?1 \
                 ORDER BY c.id{}",
                limit_sql(limit)
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement.query_map(params![after], index_entry_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}
