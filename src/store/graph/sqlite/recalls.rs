use std::collections::HashMap;

use super::SqliteGraphStore;
use super::rows::*;
use crate::domain::{Context, ContextFilter, Timestamp};
use crate::error::StoreResult;
use crate::store::graph::{RecallGraph, RecallOrder, RecallStats, RecallTally};
use async_trait::async_trait;
use rusqlite::{params, params_from_iter};
use uuid::Uuid;

fn stats(count: i64, last: i64) -> RecallStats {
    RecallStats { count: count.max(0) as u64, last_recalled_at: Some(Timestamp(last)) }
}

#[async_trait]
impl RecallGraph for SqliteGraphStore {
    async fn record_recalls(&self, tallies: &[RecallTally]) -> StoreResult<()> {
        if tallies.is_empty() {
            return Ok(());
        }
        let tallies = tallies.to_vec();
        self.write(move |tx| {
            let mut statement = tx.prepare_cached(
                "INSERT INTO context_recalls (context_id, recall_count, last_recalled_at) \
                 SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM contexts WHERE id = ?1 AND deleted = 0) \
                 ON CONFLICT(context_id) DO UPDATE SET recall_count = recall_count + excluded.recall_count, \
                 last_recalled_at = max(last_recalled_at, excluded.last_recalled_at)",
            )?;
            for tally in &tallies {
                statement.execute(params![tally.id.to_string(), tally.count as i64, tally.last_at.millis()])?;
            }
            Ok(())
        })
        .await
    }

    async fn recall_stats(&self, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, RecallStats>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        self.read(move |conn| {
            let mut found = HashMap::new();
            for chunk in ids.chunks(500) {
                let sql = format!(
                    "SELECT context_id, recall_count, last_recalled_at FROM context_recalls WHERE context_id IN ({})",
                    placeholders(chunk.len())
                );
                let mut statement = conn.prepare_cached(&sql)?;
                let rows = statement.query_map(params_from_iter(chunk.iter()), |row| {
                    Ok((parse_uuid(&row.get::<_, String>(0)?)?, stats(row.get(1)?, row.get(2)?)))
                })?;
                for row in rows {
                    let (id, stats) = row?;
                    found.insert(id, stats);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn list_recalled(
        &self,
        filter: &ContextFilter,
        order: RecallOrder,
        offset: usize,
        limit: usize,
    ) -> StoreResult<Vec<(Context, RecallStats)>> {
        let (conditions, values) = filter_sql(filter);
        let order = match order {
            RecallOrder::Count => "r.recall_count DESC, r.context_id DESC",
            RecallOrder::LastRecalled => "r.last_recalled_at DESC, r.context_id DESC",
        };
        self.read(move |conn| {
            // Offsets and limits are written out, as everywhere (see `limit_sql`); the statement is not cached,
            // since each page's offset makes another.
            let sql = format!(
                "SELECT {CONTEXT_COLUMNS}, r.recall_count, r.last_recalled_at FROM context_recalls r \
                 JOIN contexts c ON c.id = r.context_id WHERE {} ORDER BY {order}{} OFFSET {offset}",
                conditions.join(" AND "),
                limit_sql(limit)
            );
            let mut statement = conn.prepare(&sql)?;
            let rows = statement.query_map(params_from_iter(values.iter()), |row| {
                Ok((context_from_row(row)?, stats(row.get(13)?, row.get(14)?)))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}
