use crate::domain::{AgentState, Context, ContextFilter, ReadScope, Session, Timestamp, Visibility};
use crate::store::graph::IndexEntry;
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params, params_from_iter};
use serde_json::Value;
use uuid::Uuid;

pub(super) const CONTEXT_COLUMNS: &str = "c.id, c.session_id, c.agent_id, c.type, c.content, c.tags, c.metadata, \
     c.visibility, c.created_at, c.updated_at, c.version, c.expires_at, c.content_hash";

pub(super) fn encode_embedding(embedding: &[f32]) -> Vec<u8> {
    embedding.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(super) fn decode_embedding(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub(super) fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("JSON values serialize")
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

pub(super) fn parse_uuid(text: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

pub(super) fn parse_visibility(text: &str) -> rusqlite::Result<Visibility> {
    Visibility::parse(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown visibility '{text}'").into(),
        )
    })
}

/// Reads a context from a row selected with `CONTEXT_COLUMNS` first.
pub(super) fn context_from_row(row: &Row<'_>) -> rusqlite::Result<Context> {
    context_from_row_at(row, 0)
}

/// Reads a context from a row selected with `CONTEXT_COLUMNS` starting at column `at`.
pub(super) fn context_from_row_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Context> {
    Ok(Context {
        id: parse_uuid(&row.get::<_, String>(at)?)?,
        session_id: row.get(at + 1)?,
        agent_id: row.get(at + 2)?,
        context_type: row.get(at + 3)?,
        content: row.get(at + 4)?,
        tags: parse_json(&row.get::<_, String>(at + 5)?)?,
        metadata: parse_json(&row.get::<_, String>(at + 6)?)?,
        visibility: parse_visibility(&row.get::<_, String>(at + 7)?)?,
        created_at: Timestamp(row.get(at + 8)?),
        updated_at: Timestamp(row.get(at + 9)?),
        version: row.get(at + 10)?,
        expires_at: row.get::<_, Option<i64>>(at + 11)?.map(Timestamp),
        content_hash: row.get(at + 12)?,
    })
}

pub(super) fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: row.get(0)?,
        purpose: row.get(1)?,
        metadata: parse_json(&row.get::<_, String>(2)?)?,
        created_by: row.get(3)?,
        created_at: Timestamp(row.get(4)?),
    })
}

pub(super) fn state_from_row(row: &Row<'_>) -> rusqlite::Result<AgentState> {
    let session_id: String = row.get(1)?;
    Ok(AgentState {
        agent_id: row.get(0)?,
        session_id: (!session_id.is_empty()).then_some(session_id),
        key: row.get(2)?,
        value: parse_json(&row.get::<_, String>(3)?)?,
        version: row.get(4)?,
        updated_at: Timestamp(row.get(5)?),
        expires_at: row.get::<_, Option<i64>>(6)?.map(Timestamp),
    })
}

pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// The page query of `list_contexts` for the conditions of `filter_sql` (plus the cursor).
pub(crate) fn list_contexts_sql(conditions: &[String], limit: usize) -> String {
    format!(
        "SELECT {CONTEXT_COLUMNS} FROM contexts c WHERE {} ORDER BY c.id DESC{}",
        conditions.join(" AND "),
        limit_sql(limit)
    )
}

/// A `LIMIT` clause with the number written out, never a bound parameter: SQLite (3.53, bundled) lets the
/// planner look at a bound LIMIT, which marks the statement to be prepared again whenever that parameter is
/// bound anew (or the bindings cleared, as rusqlite does when a cached statement goes back to the cache).
/// With `LIMIT ?` every `list_contexts` was parsed and planned anew (17% of the server's CPU under the read benchmark).
pub(super) fn limit_sql(limit: usize) -> String {
    format!(" LIMIT {limit}")
}

/// SQL conditions (on alias `c`) and their parameters for a filter, scope and expiry included.
pub(crate) fn filter_sql(filter: &ContextFilter) -> (Vec<String>, Vec<SqlValue>) {
    let mut conditions = vec!["c.deleted = 0".to_string()];
    let mut values: Vec<SqlValue> = Vec::new();
    scope_sql(&filter.scope, filter.now, &mut conditions, &mut values);
    if let Some(session_id) = &filter.session_id {
        conditions.push("c.session_id = ?".into());
        values.push(session_id.clone().into());
    }
    let mut push_in = |column: &str, items: Vec<String>, conditions: &mut Vec<String>| {
        if !items.is_empty() {
            conditions.push(format!("{column} IN ({})", placeholders(items.len())));
            values.extend(items.into_iter().map(SqlValue::from));
        }
    };
    push_in("c.type", filter.types.clone(), &mut conditions);
    push_in("c.agent_id", filter.agent_ids.clone(), &mut conditions);
    push_in("c.visibility", filter.visibility.iter().map(|v| v.as_str().to_string()).collect(), &mut conditions);
    if !filter.tags_any.is_empty() {
        conditions.push(format!(
            "EXISTS (SELECT 1 FROM context_tags t WHERE t.context_id = c.id AND t.tag IN ({}))",
            placeholders(filter.tags_any.len())
        ));
        values.extend(filter.tags_any.iter().cloned().map(SqlValue::from));
    }
    for tag in &filter.tags_all {
        conditions.push("EXISTS (SELECT 1 FROM context_tags t WHERE t.context_id = c.id AND t.tag = ?)".into());
        values.push(tag.clone().into());
    }
    if let Some(after) = filter.created_after {
        conditions.push("c.created_at >= ?".into());
        values.push(after.millis().into());
    }
    if let Some(before) = filter.created_before {
        conditions.push("c.created_at < ?".into());
        values.push(before.millis().into());
    }
    for (key, value) in &filter.metadata {
        let path = format!("$.\"{key}\"");
        match value {
            Value::Bool(flag) => {
                conditions.push("json_type(c.metadata, ?) = ?".into());
                values.push(path.into());
                values.push(if *flag { "true" } else { "false" }.to_string().into());
            }
            Value::String(text) => {
                conditions.push("(json_type(c.metadata, ?) = 'text' AND json_extract(c.metadata, ?) = ?)".into());
                values.push(path.clone().into());
                values.push(path.into());
                values.push(text.clone().into());
            }
            Value::Number(number) => {
                conditions.push(
                    "(json_type(c.metadata, ?) IN ('integer', 'real') AND json_extract(c.metadata, ?) = ?)".into(),
                );
                values.push(path.clone().into());
                values.push(path.into());
                values.push(match number.as_i64() {
                    Some(i) => SqlValue::Integer(i),
                    None => SqlValue::Real(number.as_f64().unwrap_or(f64::NAN)),
                });
            }
            Value::Null | Value::Array(_) | Value::Object(_) => conditions.push("0".into()),
        }
    }
    (conditions, values)
}

pub(super) fn scope_sql(scope: &ReadScope, now: Timestamp, conditions: &mut Vec<String>, values: &mut Vec<SqlValue>) {
    if !scope.admin {
        conditions.push("(c.visibility = 'public' OR (c.visibility = 'private' AND c.agent_id = ?))".into());
        values.push(scope.agent_id.clone().into());
    }
    if let Some(sessions) = &scope.sessions {
        conditions.push(format!("c.session_id IN ({})", placeholders(sessions.len())));
        values.extend(sessions.iter().cloned().map(SqlValue::from));
    }
    conditions.push("(c.expires_at IS NULL OR c.expires_at > ?)".into());
    values.push(now.millis().into());
}

pub(super) fn write_tags(tx: &Transaction<'_>, id: Uuid, tags: &[String]) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM context_tags WHERE context_id = ?1", params![id.to_string()])?;
    let mut insert = tx.prepare_cached("INSERT INTO context_tags (context_id, tag) VALUES (?1, ?2)")?;
    for tag in tags {
        insert.execute(params![id.to_string(), tag])?;
    }
    Ok(())
}

/// Writes every column of a context row (insert or replace), leaving `deleted` = 0.
pub(super) fn write_context(
    tx: &Transaction<'_>,
    context: &Context,
    embedding: Option<&[f32]>,
) -> rusqlite::Result<()> {
    let fields = params![
        context.id.to_string(),
        context.session_id,
        context.agent_id,
        context.context_type,
        context.content,
        json_text(&context.tags),
        json_text(&context.metadata),
        context.visibility.as_str(),
        context.created_at.millis(),
        context.updated_at.millis(),
        context.version,
        context.expires_at.map(Timestamp::millis),
        context.content_hash,
    ];
    match embedding {
        Some(embedding) => {
            let mut all: Vec<&dyn rusqlite::ToSql> = fields.to_vec();
            let blob = encode_embedding(embedding);
            all.push(&blob);
            tx.execute(
                "INSERT INTO contexts (id, session_id, agent_id, type, content, tags, metadata, visibility, \
                 created_at, updated_at, version, expires_at, content_hash, embedding, deleted) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 0) \
                 ON CONFLICT(id) DO UPDATE SET session_id = excluded.session_id, agent_id = excluded.agent_id, \
                 type = excluded.type, content = excluded.content, tags = excluded.tags, \
                 metadata = excluded.metadata, visibility = excluded.visibility, created_at = excluded.created_at, \
                 updated_at = excluded.updated_at, version = excluded.version, expires_at = excluded.expires_at, \
                 content_hash = excluded.content_hash, embedding = excluded.embedding, deleted = 0",
                all.as_slice(),
            )?;
        }
        None => {
            tx.execute(
                "UPDATE contexts SET session_id = ?2, agent_id = ?3, type = ?4, content = ?5, tags = ?6, \
                 metadata = ?7, visibility = ?8, created_at = ?9, updated_at = ?10, version = ?11, \
                 expires_at = ?12, content_hash = ?13, deleted = 0 WHERE id = ?1",
                fields,
            )?;
        }
    }
    write_tags(tx, context.id, &context.tags)
}

pub(super) fn load_context(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<Context>> {
    conn.prepare_cached(&format!("SELECT {CONTEXT_COLUMNS} FROM contexts c WHERE c.id = ?1 AND c.deleted = 0"))?
        .query_row(params![id.to_string()], context_from_row)
        .optional()
}

/// Live contexts among `ids` (in no particular order), selected with `CONTEXT_COLUMNS` plus `extra`.
pub(super) fn live_by_ids<T>(
    conn: &Connection,
    extra: &str,
    ids: &[Uuid],
    map: fn(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut found = Vec::with_capacity(ids.len());
    // SQLite caps bound parameters; large id sets go in chunks.
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT {CONTEXT_COLUMNS}{extra} FROM contexts c WHERE c.deleted = 0 AND c.id IN ({})",
            placeholders(chunk.len())
        );
        let mut statement = conn.prepare_cached(&sql)?;
        let keys: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
        let rows = statement.query_map(params_from_iter(keys.iter()), map)?;
        for row in rows {
            found.push(row?);
        }
    }
    Ok(found)
}

pub(super) fn index_entry_from_row(row: &Row<'_>) -> rusqlite::Result<IndexEntry> {
    Ok(IndexEntry { context: context_from_row(row)?, embedding: decode_embedding(&row.get::<_, Vec<u8>>(13)?) })
}

pub(super) fn duplicate_of(
    conn: &Connection,
    session_id: &str,
    content_hash: &str,
    scope: &ReadScope,
) -> rusqlite::Result<Option<Context>> {
    let mut conditions = vec!["c.deleted = 0".to_string(), "c.session_id = ?".into(), "c.content_hash = ?".into()];
    let mut values: Vec<SqlValue> = vec![session_id.to_string().into(), content_hash.to_string().into()];
    scope_sql(scope, Timestamp::now(), &mut conditions, &mut values);
    // Without INDEXED BY the planner walks `contexts_by_session` to get id order and checks every context of
    // the session for the hash: 24 ms per store at 6 000 contexts per session (0.2 ms with the hash index).
    let sql = format!(
        "SELECT {CONTEXT_COLUMNS} FROM contexts c INDEXED BY contexts_by_hash WHERE {} ORDER BY c.id LIMIT 1",
        conditions.join(" AND ")
    );
    conn.query_row(&sql, params_from_iter(values.iter()), context_from_row).optional()
}
