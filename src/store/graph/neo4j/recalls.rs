use std::collections::HashMap;

use super::rows::*;
use super::{Neo4jGraphStore, TxResult, cypher, query, rows};
use crate::domain::{Context, ContextFilter, Timestamp};
use crate::error::StoreResult;
use crate::store::graph::{RecallGraph, RecallOrder, RecallStats, RecallTally};
use async_trait::async_trait;
use neo4rs::Row;
use uuid::Uuid;

fn stats_of(row: &Row) -> TxResult<RecallStats> {
    let count: i64 = row.get("count")?;
    Ok(RecallStats { count: count.max(0) as u64, last_recalled_at: Some(Timestamp(row.get("last_at")?)) })
}

#[async_trait]
impl RecallGraph for Neo4jGraphStore {
    async fn record_recalls(&self, tallies: &[RecallTally]) -> StoreResult<()> {
        if tallies.is_empty() {
            return Ok(());
        }
        let tallies: Vec<serde_json::Value> = tallies
            .iter()
            .map(|t| serde_json::json!({"id": t.id.to_string(), "count": t.count, "at": t.last_at.millis()}))
            .collect();
        transaction!(self, |txn| {
            txn.run(query(cypher::RECALL_RECORD).param("tallies", bolt(serde_json::Value::Array(tallies.clone()))?))
                .await?;
            Ok(())
        })
    }

    async fn recall_stats(&self, ids: &[Uuid]) -> StoreResult<HashMap<Uuid, RecallStats>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        read!(self, |txn| {
            let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
            rows(txn, query(cypher::RECALL_STATS).param("ids", ids))
                .await?
                .iter()
                .map(|row| Ok((parse_uuid(&row.get::<String>("id")?)?, stats_of(row)?)))
                .collect()
        })
    }

    async fn list_recalled(
        &self,
        filter: &ContextFilter,
        order: RecallOrder,
        offset: usize,
        limit: usize,
    ) -> StoreResult<Vec<(Context, RecallStats)>> {
        read!(self, |txn| {
            let statement = query(cypher::RECALL_LIST)
                .param("by_count", order == RecallOrder::Count)
                .param("offset", offset as i64);
            rows(txn, filter_params(statement, filter, limit)?)
                .await?
                .iter()
                .map(|row| Ok((context_of(row)?, stats_of(row)?)))
                .collect()
        })
    }
}
