use super::rows::*;
use super::{Neo4jGraphStore, TxResult, cypher, query, rows};
use crate::domain::{Context, Timestamp};
use crate::error::StoreResult;
use crate::store::graph::{IndexEntry, JournalGraph, PendingIndex};
use async_trait::async_trait;
use neo4rs::Txn;
use uuid::Uuid;

/// Journal sequences order entries by creation time; the low bits keep concurrent writers apart (a clash
/// fails the unique constraint and the transaction is retried).
pub(super) fn journal_seq() -> i64 {
    (Timestamp::now().millis() << 20) | i64::from(fastrand::u32(..1 << 20))
}

pub(super) async fn record(txn: &mut Txn, id: Uuid, op: &str) -> TxResult<i64> {
    let seq = journal_seq();
    txn.run(
        query(cypher::JOURNAL_ADD)
            .param("seq", seq)
            .param("item_id", id.to_string())
            .param("op", op)
            .param("created_at", Timestamp::now().millis()),
    )
    .await?;
    Ok(seq)
}

#[async_trait]
impl JournalGraph for Neo4jGraphStore {
    async fn purge_context(&self, id: Uuid) -> StoreResult<()> {
        transaction!(self, |txn| {
            txn.run(query(cypher::CONTEXT_PURGE).param("id", id.to_string())).await?;
            Ok(())
        })
    }

    async fn rollback_insert(&self, id: Uuid) -> StoreResult<()> {
        transaction!(self, |txn| {
            txn.run(query(cypher::CONTEXT_REMOVE).param("id", id.to_string())).await?;
            Ok(())
        })
    }

    async fn rollback_update(&self, previous: &Context, previous_embedding: &[f32]) -> StoreResult<()> {
        transaction!(self, |txn| {
            let statement = query(cypher::CONTEXT_RESTORE)
                .param("id", previous.id.to_string())
                .param("version", previous.version)
                .param("tags", previous.tags.clone())
                .param("props", context_props(previous, previous_embedding)?);
            txn.run(statement).await?;
            Ok(())
        })
    }

    async fn rollback_delete(&self, id: Uuid) -> StoreResult<()> {
        transaction!(self, |txn| {
            txn.run(query(cypher::CONTEXT_SET_DELETED).param("id", id.to_string()).param("deleted", false)).await?;
            Ok(())
        })
    }

    async fn expired_contexts(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<Uuid>> {
        read!(self, |txn| {
            let statement = query(cypher::CONTEXT_EXPIRED).param("now", now.millis()).param("limit", limit as i64);
            rows(txn, statement).await?.iter().map(|row| Ok(parse_uuid(&row.get::<String>("id")?)?)).collect()
        })
    }

    async fn pending_index(&self, limit: usize) -> StoreResult<Vec<PendingIndex>> {
        read!(self, |txn| {
            rows(txn, query(cypher::JOURNAL_PENDING).param("limit", limit as i64))
                .await?
                .iter()
                .map(|row| Ok(PendingIndex { seq: row.get("seq")?, id: parse_uuid(&row.get::<String>("item_id")?)? }))
                .collect()
        })
    }

    async fn clear_pending(&self, seqs: &[i64]) -> StoreResult<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        transaction!(self, |txn| {
            for chunk in seqs.chunks(1000) {
                txn.run(query(cypher::JOURNAL_CLEAR).param("seqs", chunk.to_vec())).await?;
            }
            Ok(())
        })
    }

    async fn index_entries(&self, ids: &[Uuid]) -> StoreResult<Vec<IndexEntry>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, |txn| {
            let statement =
                query(cypher::INDEX_ENTRIES).param("ids", ids.iter().map(Uuid::to_string).collect::<Vec<_>>());
            rows(txn, statement).await?.iter().map(index_entry_of).collect()
        })
    }

    async fn scan_index_entries(&self, after: Option<Uuid>, limit: usize) -> StoreResult<Vec<IndexEntry>> {
        read!(self, |txn| {
            let statement = query(cypher::INDEX_SCAN)
                .param("after", after.map(|a| a.to_string()).unwrap_or_default())
                .param("limit", limit as i64);
            rows(txn, statement).await?.iter().map(index_entry_of).collect()
        })
    }
}
