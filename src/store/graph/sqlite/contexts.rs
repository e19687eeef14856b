use super::rows::*;
use super::{SqliteGraphStore, journal};
use crate::domain::{Context, ContextFilter, ContextVersion, ReadScope, Session, Timestamp};
use crate::error::{StoreError, StoreResult};
use crate::store::graph::{ContextGraph, IndexEntry, InsertOutcome, versions};
use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, params, params_from_iter};
use uuid::Uuid;

#[async_trait]
impl ContextGraph for SqliteGraphStore {
    async fn create_session(&self, session: &Session) -> StoreResult<()> {
        let session = session.clone();
        self.write(move |tx| {
            let inserted = tx.execute(
                "INSERT INTO sessions (id, purpose, metadata, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT(id) DO NOTHING",
                params![
                    session.id,
                    session.purpose,
                    json_text(&session.metadata),
                    session.created_by,
                    session.created_at.millis()
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Conflict(format!("session '{}' already exists", session.id)));
            }
            Ok(())
        })
        .await
    }

    async fn get_session(&self, id: &str) -> StoreResult<Option<Session>> {
        let id = id.to_string();
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT id, purpose, metadata, created_by, created_at FROM sessions WHERE id = ?1",
                    params![id],
                    session_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn list_sessions(
        &self,
        after: Option<&str>,
        limit: usize,
        only: Option<&[String]>,
    ) -> StoreResult<Vec<Session>> {
        let mut values: Vec<SqlValue> = vec![after.unwrap_or("").to_string().into()];
        let restriction = match only {
            Some(ids) => {
                values.extend(ids.iter().cloned().map(SqlValue::from));
                format!(" AND id IN ({})", placeholders(ids.len()))
            }
            None => String::new(),
        };
        self.read(move |conn| {
            let sql = format!(
                "SELECT id, purpose, metadata, created_by, created_at FROM sessions WHERE id > ?{restriction} \
                 ORDER BY id{}",
                limit_sql(limit)
            );
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement.query_map(params_from_iter(values.iter()), session_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn find_duplicate(
        &self,
        session_id: &str,
        content_hash: &str,
        scope: &ReadScope,
    ) -> StoreResult<Option<Context>> {
        let (session_id, content_hash, scope) = (session_id.to_string(), content_hash.to_string(), scope.clone());
        self.read(move |conn| Ok(duplicate_of(conn, &session_id, &content_hash, &scope)?)).await
    }

    async fn insert_context(
        &self,
        context: &Context,
        embedding: &[f32],
        dedup_scope: &ReadScope,
    ) -> StoreResult<InsertOutcome> {
        let (context, embedding, scope) = (context.clone(), embedding.to_vec(), dedup_scope.clone());
        self.write(move |tx| {
            let session_exists: bool = tx
                .query_row("SELECT 1 FROM sessions WHERE id = ?1", params![context.session_id], |_| Ok(()))
                .optional()?
                .is_some();
            if !session_exists {
                return Err(StoreError::NotFound);
            }
            if let Some(existing) = duplicate_of(tx, &context.session_id, &context.content_hash, &scope)? {
                return Ok(InsertOutcome::Duplicate(Box::new(existing)));
            }
            write_context(tx, &context, Some(&embedding))?;
            let journal_seq = journal::record(tx, context.id, "upsert")?;
            Ok(InsertOutcome::Inserted { journal_seq })
        })
        .await
    }

    async fn update_context(&self, updated: &Context, embedding: &[f32]) -> StoreResult<(i64, Context, Vec<f32>)> {
        let (updated, embedding) = (updated.clone(), embedding.to_vec());
        self.write(move |tx| {
            let IndexEntry { context: previous, embedding: previous_embedding } =
                live_by_ids(tx, ", c.embedding", &[updated.id], index_entry_from_row)?
                    .pop()
                    .ok_or(StoreError::NotFound)?;
            versions::check_successor(previous.version, updated.version)?;
            tx.execute(
                "INSERT OR REPLACE INTO context_versions (context_id, version, type, content, tags, metadata, \
                 visibility, updated_at, content_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    previous.id.to_string(),
                    previous.version,
                    previous.context_type,
                    previous.content,
                    json_text(&previous.tags),
                    json_text(&previous.metadata),
                    previous.visibility.as_str(),
                    previous.updated_at.millis(),
                    previous.content_hash,
                ],
            )?;
            write_context(tx, &updated, Some(&embedding))?;
            let seq = journal::record(tx, updated.id, "upsert")?;
            Ok((seq, previous, previous_embedding))
        })
        .await
    }

    async fn delete_context(&self, id: Uuid, expected_version: Option<i64>) -> StoreResult<(i64, Context)> {
        self.write(move |tx| {
            let current = load_context(tx, id)?.ok_or(StoreError::NotFound)?;
            versions::check_expected(expected_version, current.version)?;
            tx.execute("UPDATE contexts SET deleted = 1 WHERE id = ?1", params![id.to_string()])?;
            let seq = journal::record(tx, id, "delete")?;
            Ok((seq, current))
        })
        .await
    }

    async fn get_context(&self, id: Uuid) -> StoreResult<Option<Context>> {
        self.read(move |conn| Ok(load_context(conn, id)?)).await
    }

    async fn get_contexts(&self, ids: &[Uuid]) -> StoreResult<Vec<Context>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        self.read(move |conn| Ok(live_by_ids(conn, "", &ids, context_from_row)?)).await
    }

    async fn list_contexts(
        &self,
        filter: &ContextFilter,
        after: Option<Uuid>,
        limit: usize,
    ) -> StoreResult<Vec<Context>> {
        let (mut conditions, mut values) = filter_sql(filter);
        if let Some(after) = after {
            conditions.push("c.id < ?".into());
            values.push(after.to_string().into());
        }
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&list_contexts_sql(&conditions, limit))?;
            let rows = statement.query_map(params_from_iter(values.iter()), context_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn context_versions(
        &self,
        id: Uuid,
        before: Option<i64>,
        limit: Option<usize>,
    ) -> StoreResult<Vec<ContextVersion>> {
        let before = before.unwrap_or(i64::MAX);
        let limit = limit.map_or(-1, |n| n.min(i64::MAX as usize) as i64);
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT version, type, content, tags, metadata, visibility, updated_at FROM context_versions \
                 WHERE context_id = ?1 AND version < ?2 ORDER BY version DESC LIMIT ?3",
            )?;
            let rows = statement.query_map(params![id.to_string(), before, limit], |row| {
                Ok(ContextVersion {
                    id,
                    version: row.get(0)?,
                    context_type: row.get(1)?,
                    content: row.get(2)?,
                    tags: parse_json(&row.get::<_, String>(3)?)?,
                    metadata: parse_json(&row.get::<_, String>(4)?)?,
                    visibility: parse_visibility(&row.get::<_, String>(5)?)?,
                    updated_at: Timestamp(row.get(6)?),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn import_versions(&self, id: Uuid, versions: &[ContextVersion]) -> StoreResult<()> {
        let versions = versions.to_vec();
        self.write(move |tx| {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO context_versions (context_id, version, type, content, tags, metadata, \
                 visibility, updated_at, content_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for v in &versions {
                insert.execute(params![
                    id.to_string(),
                    v.version,
                    v.context_type,
                    v.content,
                    json_text(&v.tags),
                    json_text(&v.metadata),
                    v.visibility.as_str(),
                    v.updated_at.millis(),
                    crate::domain::content_hash(&v.content),
                ])?;
            }
            Ok(())
        })
        .await
    }
}
