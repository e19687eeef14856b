//! Analysts' SQL on the embedded store (`query_graph`): one statement on a read-only connection of its own,
//! confined to the caller's read scope and unable to change or exhaust the store.
//!
//! How the confinement works:
//! - For a caller who is not an admin, the connection gets TEMP views named like the tables (`contexts`,
//!   `sessions`, `context_tags`, `context_versions`, `relations`, `agent_state`, `context_recalls`). SQLite
//!   resolves an unqualified name in `temp` before `main`, so queries written against the documented schema
//!   read the views. Each view holds only what the caller's scope may see: the sessions it is limited to,
//!   public contexts plus its own private ones (never `admin_only`), previous versions filtered version by
//!   version, relations whose both ends are visible, its own agent state, and the recall statistics of the
//!   contexts it sees. Deleted and expired rows and the stored embeddings are left out. Admins read the
//!   tables themselves.
//! - An authorizer, installed after the views exist, refuses everything but reading: no PRAGMA (some are
//!   process-wide, e.g. `hard_heap_limit`), no ATTACH, no writes, no function outside an allow-list (so no
//!   `load_extension`, `fts3_tokenizer`, `zeroblob`, `randomblob`). For a caller who is not an admin a table
//!   of `main` may be read only through one of the views, so `main.contexts` or `index_journal` are refused.
//! - Per-connection limits cap the size of one value (`SQLITE_LIMIT_LENGTH`) and the columns of a row, the
//!   answer is capped in bytes, and a progress handler stops the statement at its deadline, as soon as the
//!   request that started it is gone, or once its working memory passes `MAX_WORKING_BYTES` (or all
//!   analyst queries' together pass `HEAP_CEILING_BYTES`). Sorts and
//!   temporary tables are kept in memory (`temp_store = MEMORY`), where that check sees them: spilled to
//!   temporary files, one `ORDER BY` over generated rows wrote 1.6 GB to disk in 3 s.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use async_trait::async_trait;

use super::SqliteGraphStore;
use crate::domain::{ReadScope, Timestamp};
use crate::error::{StoreError, StoreResult};
use crate::store::graph::{AnalystGraph, AnalystRequest, AnswerSize, QueryRows};

/// The largest single value (text or blob) a statement may build: above the largest stored value (64 KiB
/// content or state), far below what would hurt the process.
const MAX_VALUE_BYTES: i32 = 256 * 1024;
/// Columns of one result row (the widest table has 15).
const MAX_COLUMNS: i32 = 100;
/// Page cache of the analyst connection (negative = KiB).
const CACHE_KIB: i64 = 8 * 1024;
/// Memory a statement may add to SQLite's heap (its sorts, temporary tables and values) from when it starts.
/// SQLite counts its heap for the whole process, not per connection, so a statement is also stopped when
/// the heap passes `HEAP_CEILING_BYTES` above what it was at the first analyst query: otherwise each query
/// could start from the memory its predecessors still hold. The price is that a query may be stopped by
/// the memory of others running beside it.
const MAX_WORKING_BYTES: i64 = 128 * 1024 * 1024;
/// What all analyst statements (at most four at once, the service's limit) and the store's own page caches
/// may add to SQLite's heap together.
const HEAP_CEILING_BYTES: i64 = 4 * MAX_WORKING_BYTES + 64 * 1024 * 1024;
/// How many virtual-machine steps pass between checks of the deadline, cancellation and memory (one step
/// builds a value of at most `MAX_VALUE_BYTES`, so a statement overshoots the memory bound by at most
/// this many of them).
const PROGRESS_STEPS: i32 = 100;

/// The tables an analyst query reads (for admins, as they are; for others, through the scoped views).
const TABLES: &[&str] =
    &["sessions", "contexts", "context_tags", "context_versions", "relations", "agent_state", "context_recalls"];
/// Tables only admins read.
const ADMIN_TABLES: &[&str] = &["index_journal"];
/// Table-valued functions that read nothing but their arguments.
const TABLE_FUNCTIONS: &[&str] = &["json_each", "json_tree"];

/// Scalar, aggregate and window functions an analyst query may call: pure computations on values. Anything
/// else (extension loading, tokenizer registration, blob generators, introspection) is refused.
const FUNCTIONS: &[&str] = &[
    // core scalars
    "abs",
    "char",
    "coalesce",
    "concat",
    "concat_ws",
    "format",
    "glob",
    "hex",
    "ifnull",
    "iif",
    "if",
    "instr",
    "length",
    "like",
    "likelihood",
    "likely",
    "lower",
    "ltrim",
    "max",
    "min",
    "nullif",
    "octet_length",
    "printf",
    "quote",
    "replace",
    "round",
    "rtrim",
    "sign",
    "soundex",
    "substr",
    "substring",
    "trim",
    "typeof",
    "unhex",
    "unicode",
    "unlikely",
    "upper",
    "sqlite_version",
    // aggregates and windows
    "avg",
    "count",
    "group_concat",
    "string_agg",
    "sum",
    "total",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // dates
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
    // math
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atan2",
    "atanh",
    "ceil",
    "ceiling",
    "cos",
    "cosh",
    "degrees",
    "exp",
    "floor",
    "ln",
    "log",
    "log10",
    "log2",
    "mod",
    "pi",
    "pow",
    "power",
    "radians",
    "sin",
    "sinh",
    "sqrt",
    "tan",
    "tanh",
    "trunc",
    // JSON
    "json",
    "jsonb",
    "json_array",
    "json_array_length",
    "json_extract",
    "json_insert",
    "json_object",
    "json_patch",
    "json_pretty",
    "json_quote",
    "json_remove",
    "json_replace",
    "json_set",
    "json_type",
    "json_valid",
    "json_error_position",
    "json_group_array",
    "json_group_object",
    "json_each",
    "json_tree",
];

/// One analyst query, ready to run on a blocking thread.
pub(super) struct AnalystQuery {
    pub query: String,
    pub params: serde_json::Map<String, Value>,
    pub limit: usize,
    pub timeout: Duration,
    pub scope: ReadScope,
    /// Set when the request that asked is gone: the statement stops at its next progress check.
    pub cancelled: Arc<AtomicBool>,
}

/// Sets the flag when dropped: the async side holds it while the blocking side runs, so a dropped request
/// (client gone, request timeout) stops the statement.
pub(super) struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A name prefix no caller can know: fresh random for each analyst connection. The scoped views carry it,
/// and a read of a `main` table is allowed only from inside a view whose name has it (a caller's CTE can
/// take any name it can write, but it cannot write one it does not know when its statement is prepared).
fn secret_prefix() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("cs_{}_", hex::encode(bytes))
}

/// The TEMP views that confine a caller who is not an admin (see the module doc): for each table, a view
/// with the secret prefix that holds the scoped rows, and a view with the table's plain name over it.
fn scoped_views(scope: &ReadScope, now: Timestamp, prefix: &str) -> String {
    let me = literal(&scope.agent_id);
    let now = now.millis();
    let sessions = scope.sessions.as_ref().map(|ids| ids.iter().map(|id| literal(id)).collect::<Vec<_>>().join(", "));
    let (session_filter, context_sessions, state_sessions) = match &sessions {
        Some(list) => (
            format!(" WHERE id IN ({list})"),
            format!(" AND session_id IN ({list})"),
            format!(" AND (session_id = '' OR session_id IN ({list}))"),
        ),
        None => (String::new(), String::new(), String::new()),
    };
    let contexts = format!("temp.\"{prefix}contexts\"");
    let scoped = [
        ("sessions", format!("SELECT * FROM main.sessions{session_filter}")),
        (
            "contexts",
            format!(
                "SELECT id, session_id, agent_id, type, content, tags, metadata, visibility, created_at, updated_at, \
                 version, expires_at, content_hash, deleted FROM main.contexts WHERE deleted = 0 \
                 AND (visibility = 'public' OR (visibility = 'private' AND agent_id = {me})) \
                 AND (expires_at IS NULL OR expires_at > {now}){context_sessions}"
            ),
        ),
        ("context_tags", format!("SELECT * FROM main.context_tags WHERE context_id IN (SELECT id FROM {contexts})")),
        (
            "context_recalls",
            format!("SELECT * FROM main.context_recalls WHERE context_id IN (SELECT id FROM {contexts})"),
        ),
        (
            "context_versions",
            format!(
                "SELECT v.* FROM main.context_versions v JOIN {contexts} c ON c.id = v.context_id \
                 WHERE v.visibility = 'public' OR (v.visibility = 'private' AND c.agent_id = {me})"
            ),
        ),
        (
            "relations",
            format!(
                "SELECT * FROM main.relations WHERE from_id IN (SELECT id FROM {contexts}) \
                 AND to_id IN (SELECT id FROM {contexts})"
            ),
        ),
        (
            "agent_state",
            format!(
                "SELECT agent_id, session_id, key, value, version, updated_at, expires_at FROM main.agent_state \
                 WHERE agent_id = {me} \
                 AND (expires_at IS NULL OR expires_at > {now}){state_sessions}"
            ),
        ),
    ];
    scoped
        .iter()
        .map(|(table, select)| {
            format!(
                "CREATE TEMP VIEW \"{prefix}{table}\" AS {select};\n\
                 CREATE TEMP VIEW {table} AS SELECT * FROM temp.\"{prefix}{table}\";\n"
            )
        })
        .collect()
}

/// What the authorizer refused first, for the error message.
type Refusal = Arc<Mutex<Option<String>>>;

/// What confines one analyst connection.
struct Confinement {
    /// The secret prefix of the scoped views; None for admins, who read the tables.
    prefix: Option<String>,
    /// Names a caller who is not an admin may not even name without reading a column (`count(*)` of them
    /// would tell how many rows they hold): the tables of `main` no scope view shadows, and the built-in
    /// virtual tables.
    unnamed: Vec<String>,
}

impl Confinement {
    /// A read that reports no database: SQLite's check of a table named without any of its columns used
    /// (`SELECT count(*) FROM t`), with the name as written, or a CTE or subquery used the same way.
    fn may_name(&self, table: &str) -> bool {
        self.prefix.is_none()
            || !(self.unnamed.iter().any(|name| name == table)
                || table.starts_with("pragma_")
                || table.starts_with("sqlite_")
                || table == "dbstat")
    }
}

/// The authorizer's rule (see the module doc). `refusal` keeps the reason of the first refusal.
fn authorize(confinement: &Confinement, context: &AuthContext<'_>, refusal: &Refusal) -> Authorization {
    let prefix = confinement.prefix.as_deref();
    let verdict: Result<(), String> = match context.action {
        AuthAction::Select | AuthAction::Recursive => Ok(()),
        AuthAction::Function { function_name } => {
            let name = function_name.to_ascii_lowercase();
            if FUNCTIONS.contains(&name.as_str()) {
                Ok(())
            } else {
                Err(format!("the function {function_name}() is not available to analyst queries"))
            }
        }
        AuthAction::Read { table_name, .. } => {
            let database = context.database_name.unwrap_or_default();
            let table = table_name.to_ascii_lowercase();
            let readable = (database.is_empty() && confinement.may_name(&table))
                || TABLE_FUNCTIONS.contains(&table.as_str())
                || table == "sqlite_master"
                || table == "sqlite_schema"
                || database == "temp"
                || (database == "main"
                    && match prefix {
                        None => TABLES.contains(&table.as_str()) || ADMIN_TABLES.contains(&table.as_str()),
                        Some(prefix) => context.accessor.is_some_and(|view| view.starts_with(prefix)),
                    });
            if readable {
                Ok(())
            } else if prefix.is_none() {
                Err(format!("the table {table_name} is not available to analyst queries"))
            } else {
                Err(format!(
                    "the table {database}.{table_name} is outside this caller's scope; read the scoped tables \
                     by their plain names ({})",
                    TABLES.join(", ")
                ))
            }
        }
        AuthAction::Pragma { pragma_name, .. } => {
            Err(format!("PRAGMA {pragma_name} is not available to analyst queries"))
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            Err("ATTACH and DETACH are not available to analyst queries".to_string())
        }
        _ => Err("only read-only statements (SELECT) are allowed".to_string()),
    };
    match verdict {
        Ok(()) => Authorization::Allow,
        Err(reason) => {
            let mut first = refusal.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert(reason);
            Authorization::Deny
        }
    }
}

/// Opens the analyst connection: read-only, limited, scoped, with the authorizer and the progress handler.
fn open(path: &Path, query: &AnalystQuery, deadline: Instant, refusal: &Refusal) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
    conn.set_limit(Limit::SQLITE_LIMIT_COLUMN, MAX_COLUMNS)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout = 2000; PRAGMA cache_size = -{CACHE_KIB}; PRAGMA temp_store = MEMORY;"
    ))?;
    let prefix = (!query.scope.admin).then(secret_prefix);
    if let Some(prefix) = &prefix {
        conn.execute_batch(&scoped_views(&query.scope, Timestamp::now(), prefix))?;
    }
    let mut tables = conn.prepare("SELECT lower(name) FROM main.sqlite_master WHERE type IN ('table', 'view')")?;
    let unnamed = tables
        .query_map([], |row| row.get::<_, String>(0))?
        .filter(|name| name.as_ref().map_or(true, |name| !TABLES.contains(&name.as_str())))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    drop(tables);
    conn.execute_batch("PRAGMA query_only = 1;")?;
    let (refused, confinement) = (refusal.clone(), Confinement { prefix, unnamed });
    conn.authorizer(Some(move |context: AuthContext<'_>| authorize(&confinement, &context, &refused)))?;
    let (cancelled, refused) = (query.cancelled.clone(), refusal.clone());
    static HEAP_BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let ceiling = HEAP_BASE.get_or_init(sqlite_heap_bytes).saturating_add(HEAP_CEILING_BYTES);
    let heap_limit = sqlite_heap_bytes().saturating_add(MAX_WORKING_BYTES).min(ceiling);
    conn.progress_handler(
        PROGRESS_STEPS,
        Some(move || {
            if sqlite_heap_bytes() > heap_limit {
                let mut first = refused.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert(format!(
                    "the query needs more working memory (sorts, groups, temporary results) than analyst queries \
                     may use: {} MiB each, {} MiB for all running at once; aggregate or filter before sorting",
                    MAX_WORKING_BYTES >> 20,
                    HEAP_CEILING_BYTES >> 20
                ));
                return true;
            }
            cancelled.load(Ordering::Relaxed) || Instant::now() >= deadline
        }),
    )?;
    Ok(conn)
}

/// Bytes SQLite has allocated, over every connection of the process.
fn sqlite_heap_bytes() -> i64 {
    // SAFETY: a read of SQLite's own memory statistics: no arguments, callable from any thread.
    unsafe { rusqlite::ffi::sqlite3_memory_used() }
}

/// Runs one analyst query (blocking).
pub(super) fn run(path: &Path, query: &AnalystQuery) -> StoreResult<QueryRows> {
    let deadline = Instant::now() + query.timeout;
    let refusal: Refusal = Arc::default();
    let conn = open(path, query, deadline, &refusal)?;
    let rejected = |err: rusqlite::Error| -> StoreError {
        if let Some(reason) = refusal.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return StoreError::InvalidQuery(reason);
        }
        match err {
            rusqlite::Error::SqliteFailure(code, _) if code.code == rusqlite::ErrorCode::OperationInterrupted => {
                if query.cancelled.load(Ordering::SeqCst) {
                    StoreError::Unavailable("the analyst query was cancelled: its request is gone".into())
                } else {
                    StoreError::InvalidQuery(format!("the query ran longer than {} ms", query.timeout.as_millis()))
                }
            }
            rusqlite::Error::SqliteFailure(code, _)
                if matches!(code.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                StoreError::Unavailable(err.to_string())
            }
            rusqlite::Error::SqliteFailure(code, _) if code.code == rusqlite::ErrorCode::TooBig => {
                StoreError::TooLarge(format!(
                    "a value the query builds is larger than {MAX_VALUE_BYTES} bytes, the analyst limit"
                ))
            }
            other => StoreError::InvalidQuery(other.to_string()),
        }
    };
    let mut statement = conn.prepare(&query.query).map_err(rejected)?;
    if !statement.readonly() {
        return Err(StoreError::InvalidQuery("only read-only statements (SELECT) are allowed".into()));
    }
    // SQLite compiles nothing from a text of only comments, semicolons and spaces.
    if statement.column_count() == 0 {
        return Err(StoreError::InvalidQuery("the query holds no SQL statement that returns rows".into()));
    }
    for index in 1..=statement.parameter_count() {
        let name = statement.parameter_name(index).unwrap_or("?");
        let value = query
            .params
            .get(name.trim_start_matches([':', '@', '$']))
            .ok_or_else(|| StoreError::InvalidQuery(format!("parameter {name} has no value in params (use :name)")))?;
        statement.raw_bind_parameter(index, sql_value(value)).map_err(rejected)?;
    }
    let columns: Vec<String> = statement.column_names().into_iter().map(str::to_string).collect();
    let width = columns.len();
    let mut answer = AnswerSize::default();
    let mut rows = Vec::new();
    let mut truncated = false;
    let mut cursor = statement.raw_query();
    while let Some(row) = cursor.next().map_err(rejected)? {
        if rows.len() == query.limit {
            truncated = true;
            break;
        }
        let values = (0..width).map(|i| row.get_ref(i).map(json_value)).collect::<rusqlite::Result<Vec<_>>>()?;
        answer.add(&values)?;
        rows.push(values);
    }
    Ok(QueryRows { columns, rows, truncated })
}

/// A JSON parameter as an SQLite value: objects and arrays are bound as JSON text.
fn sql_value(value: &Value) -> SqlValue {
    match value {
        Value::Null => SqlValue::Null,
        Value::Bool(flag) => SqlValue::Integer(i64::from(*flag)),
        Value::Number(number) => match number.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(number.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(text) => SqlValue::Text(text.clone()),
        Value::Array(_) | Value::Object(_) => SqlValue::Text(value.to_string()),
    }
}

fn json_value(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(bytes) => String::from_utf8_lossy(bytes).into_owned().into(),
        ValueRef::Blob(bytes) => format!("x'{}'", hex::encode(bytes)).into(),
    }
}

#[async_trait]
impl AnalystGraph for SqliteGraphStore {
    fn query_language(&self) -> &'static str {
        "sql"
    }

    fn query_schema(&self) -> String {
        format!(
            "SQLite, read-only. Times are milliseconds since the Unix epoch; JSON columns hold JSON text \
             (use json_extract); contexts.deleted = 1 marks deleted rows; agent_state.session_id '' = none. \
             One SELECT (or WITH) statement; no PRAGMA, ATTACH or writes. Tables: {}",
            self.schema
        )
    }

    fn scoped_analyst_queries(&self) -> bool {
        true
    }

    async fn analyst_query(&self, request: AnalystRequest<'_>) -> StoreResult<QueryRows> {
        let cancelled = Arc::new(AtomicBool::new(false));
        let query = AnalystQuery {
            query: request.query.to_string(),
            params: request.params.clone(),
            limit: request.limit,
            timeout: request.timeout,
            scope: request.scope.clone(),
            cancelled: cancelled.clone(),
        };
        let (path, ticket) = (self.path.clone(), request.ticket);
        // Dropping this future (client gone, request timeout) stops the statement at its next progress check;
        // the ticket is released by the blocking thread once the statement has stopped.
        let _cancel_on_drop = CancelOnDrop(cancelled);
        tokio::task::spawn_blocking(move || {
            let _ticket = ticket;
            run(&path, &query)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_cannot_break_out_of_their_quotes() {
        assert_eq!(literal("o'brien"), "'o''brien'");
        let scope =
            ReadScope { agent_id: "x'); DROP TABLE t; --".into(), admin: false, sessions: Some(vec!["s'".into()]) };
        let views = scoped_views(&scope, Timestamp(0), "cs_0_");
        assert!(views.contains("'x''); DROP TABLE t; --'"), "{views}");
        assert!(views.contains("IN ('s''')"), "{views}");
    }
}
