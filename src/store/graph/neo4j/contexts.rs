use super::rows::*;
use super::{Neo4jGraphStore, Statements, TxResult, cypher, journal, query, rows};
use crate::domain::{Context, ContextFilter, ContextVersion, ReadScope, Session, Timestamp};
use crate::error::{StoreError, StoreResult};
use crate::store::graph::{ContextGraph, IndexEntry, InsertOutcome, versions};
use async_trait::async_trait;
use neo4rs::Txn;
use serde_json::Value;
use uuid::Uuid;

/// Takes the context's write lock; returns its live state and embedding.
pub(super) async fn lock_entry(txn: &mut Txn, id: Uuid) -> TxResult<IndexEntry> {
    let found = rows(txn, query(cypher::CONTEXT_LOCK).param("id", id.to_string())).await?;
    match found.first() {
        Some(row) => index_entry_of(row),
        None => Err(StoreError::NotFound.into()),
    }
}

pub(super) async fn duplicate_of(
    txn: &mut impl Statements,
    session_id: &str,
    content_hash: &str,
    scope: &ReadScope,
) -> TxResult<Option<Context>> {
    let statement =
        query(cypher::CONTEXT_DUPLICATE).param("session_id", session_id).param("content_hash", content_hash);
    let found = rows(txn, scope_params(statement, scope, Timestamp::now())).await?;
    found.first().map(context_of).transpose()
}

#[async_trait]
impl ContextGraph for Neo4jGraphStore {
    async fn create_session(&self, session: &Session) -> StoreResult<()> {
        transaction!(self, |txn| {
            let statement = query(cypher::SESSION_CREATE)
                .param("id", session.id.clone())
                .param("purpose", session.purpose.clone())
                .param("metadata", json_text(&session.metadata))
                .param("created_by", session.created_by.clone())
                .param("created_at", session.created_at.millis());
            let id = session.id.clone();
            if rows(txn, statement).await?.is_empty() {
                return Err(StoreError::Conflict(format!("session '{id}' already exists")).into());
            }
            Ok(())
        })
        .map_err(|e| match e {
            StoreError::Conflict(_) => StoreError::Conflict(format!("session '{}' already exists", session.id)),
            other => other,
        })
    }

    async fn get_session(&self, id: &str) -> StoreResult<Option<Session>> {
        read!(self, |txn| {
            let statement = query(cypher::SESSION_GET).param("id", id);
            let found = rows(txn, statement).await?;
            found.first().map(session_of).transpose()
        })
    }

    async fn list_sessions(
        &self,
        after: Option<&str>,
        limit: usize,
        only: Option<&[String]>,
    ) -> StoreResult<Vec<Session>> {
        read!(self, |txn| {
            let statement = query(cypher::SESSION_LIST)
                .param("after", after.unwrap_or(""))
                .param("only", only.map(<[String]>::to_vec))
                .param("limit", limit as i64);
            rows(txn, statement).await?.iter().map(session_of).collect()
        })
    }

    async fn find_duplicate(
        &self,
        session_id: &str,
        content_hash: &str,
        scope: &ReadScope,
    ) -> StoreResult<Option<Context>> {
        read!(self, |txn| duplicate_of(txn, session_id, content_hash, scope).await)
    }

    async fn insert_context(
        &self,
        context: &Context,
        embedding: &[f32],
        dedup_scope: &ReadScope,
    ) -> StoreResult<InsertOutcome> {
        transaction!(self, |txn| {
            let locked = rows(txn, query(cypher::SESSION_LOCK).param("id", context.session_id.clone())).await?;
            if locked.is_empty() {
                return Err(StoreError::NotFound.into());
            }
            if let Some(existing) = duplicate_of(txn, &context.session_id, &context.content_hash, dedup_scope).await? {
                return Ok(InsertOutcome::Duplicate(Box::new(existing)));
            }
            let statement = query(cypher::CONTEXT_INSERT)
                .param("session_id", context.session_id.clone())
                .param("agent_id", context.agent_id.clone())
                .param("tags", context.tags.clone())
                .param("props", context_props(context, embedding)?);
            txn.run(statement).await?;
            let journal_seq = journal::record(txn, context.id, "upsert").await?;
            Ok(InsertOutcome::Inserted { journal_seq })
        })
    }

    async fn update_context(&self, updated: &Context, embedding: &[f32]) -> StoreResult<(i64, Context, Vec<f32>)> {
        transaction!(self, |txn| {
            let IndexEntry { context: previous, embedding: previous_embedding } = lock_entry(txn, updated.id).await?;
            versions::check_successor(previous.version, updated.version)?;
            let statement = query(cypher::CONTEXT_UPDATE)
                .param("id", updated.id.to_string())
                .param("tags", updated.tags.clone())
                .param("props", context_props(updated, embedding)?);
            txn.run(statement).await?;
            let seq = journal::record(txn, updated.id, "upsert").await?;
            Ok((seq, previous, previous_embedding))
        })
    }

    async fn delete_context(&self, id: Uuid, expected_version: Option<i64>) -> StoreResult<(i64, Context)> {
        transaction!(self, |txn| {
            let current = lock_entry(txn, id).await?.context;
            versions::check_expected(expected_version, current.version)?;
            txn.run(query(cypher::CONTEXT_SET_DELETED).param("id", id.to_string()).param("deleted", true)).await?;
            let seq = journal::record(txn, id, "delete").await?;
            Ok((seq, current))
        })
    }

    async fn get_context(&self, id: Uuid) -> StoreResult<Option<Context>> {
        Ok(self.get_contexts(&[id]).await?.into_iter().next())
    }

    async fn get_contexts(&self, ids: &[Uuid]) -> StoreResult<Vec<Context>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        match &self.lookups {
            Some(lookups) => lookups.contexts(ids).await,
            None => read!(self, |txn| live_contexts(txn, ids).await),
        }
    }

    async fn list_contexts(
        &self,
        filter: &ContextFilter,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<Context>> {
        read!(self, |txn| {
            let statement = filter_query(filter, after, limit)?;
            rows(txn, statement).await?.iter().map(context_of).collect()
        })
    }

    async fn context_versions(
        &self,
        id: Uuid,
        before: Option<i64>,
        limit: Option<usize>,
    ) -> StoreResult<Vec<ContextVersion>> {
        let limit = limit.map_or(i64::MAX, |n| n.min(i64::MAX as usize) as i64);
        read!(self, |txn| {
            let statement = query(cypher::CONTEXT_VERSIONS)
                .param("id", id.to_string())
                .param("before", before.unwrap_or(i64::MAX))
                .param("limit", limit);
            let found = rows(txn, statement).await?;
            found
                .iter()
                .map(|row| {
                    let v: VersionRow = row.get("version")?;
                    Ok(ContextVersion {
                        id,
                        version: v.version,
                        context_type: v.context_type,
                        content: v.content,
                        tags: v.tags,
                        metadata: serde_json::from_str(&v.metadata).map_err(StoreError::from)?,
                        visibility: parse_visibility(&v.visibility)?,
                        updated_at: Timestamp(v.updated_at),
                    })
                })
                .collect()
        })
    }

    async fn import_versions(&self, id: Uuid, versions: &[ContextVersion]) -> StoreResult<()> {
        let listed: Vec<Value> = versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "version": v.version, "type": v.context_type, "content": v.content, "tags": v.tags,
                    "metadata": json_text(&v.metadata), "visibility": v.visibility.as_str(),
                    "updated_at": v.updated_at.millis(), "content_hash": crate::domain::content_hash(&v.content),
                })
            })
            .collect();
        transaction!(self, |txn| {
            let statement = query(cypher::VERSIONS_IMPORT)
                .param("id", id.to_string())
                .param("versions", bolt(Value::Array(listed.clone()))?);
            txn.run(statement).await?;
            Ok(())
        })
    }
}
