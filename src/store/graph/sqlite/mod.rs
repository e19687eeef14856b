//! The embedded graph store on SQLite (rusqlite, bundled): WAL, one writer connection and a pool of
//! read-only connections. Nodes and edges are tables: contexts, sessions, context_tags (TAGGED),
//! relations (RELATES_TO), context_versions (SUPERSEDES), agent_state, plus the index journal.

mod analyst;
mod contexts;
mod journal;
mod readers;
mod recalls;
mod relations;
mod rows;
mod state;
mod writer;

pub(crate) use rows::{filter_sql, list_contexts_sql};

use super::{GraphBackend, PoolStatus, StoreCounts};
use crate::error::{StoreError, StoreResult};
use async_trait::async_trait;
use readers::ReaderThreads;
use rusqlite::{Connection, Transaction};
use std::path::{Path, PathBuf};
use writer::GroupWriter;

pub(crate) const SCHEMA: &str = include_str!("schema.sql");

/// How SQLite syncs commits: `full` survives power loss, `normal` survives process crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    Normal,
    Full,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub readers: u32,
    pub synchronous: Synchronous,
}

pub struct SqliteGraphStore {
    writer: GroupWriter,
    readers: ReaderThreads,
    path: PathBuf,
    /// Tables and columns analysts can query, read from the database when it opened.
    schema: String,
}

/// Prepared statements kept per connection: the filter shapes of `list_contexts` and page sizes differ in
/// their SQL text, so the default 16 would evict hot statements.
const STATEMENT_CACHE: usize = 128;
/// Bytes the WAL file is cut back to after a checkpoint that empties it.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

impl SqliteGraphStore {
    pub fn open(options: &SqliteOptions) -> StoreResult<Self> {
        if let Some(parent) = options.path.parent() {
            crate::private_files::private_dir(parent)
                .map_err(|e| StoreError::Backend(format!("create {}: {e}", parent.display())))?;
        }
        let writer = Connection::open(&options.path)?;
        crate::private_files::private_file(&options.path)
            .map_err(|e| StoreError::Backend(format!("restrict {}: {e}", options.path.display())))?;
        let synchronous = match options.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        // The WAL grows while a long read (an analyst query) keeps it from starting over; the size limit
        // shrinks it back at the next checkpoint after that.
        writer.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON; \
             PRAGMA busy_timeout = 5000; PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};"
        ))?;
        writer.execute_batch(SCHEMA)?;
        migrate(&writer)?;
        writer.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let readers = ReaderThreads::start("sqlite-reader", options.readers as usize, || {
            let conn = Connection::open(&options.path)?;
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            conn.execute_batch("PRAGMA query_only = 1; PRAGMA busy_timeout = 5000;")?;
            Ok(conn)
        })?;
        let schema = describe_tables(&writer)?;
        Ok(Self { writer: GroupWriter::start(writer)?, readers, path: options.path.clone(), schema })
    }

    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("graph.sqlite3")
    }

    /// Runs `work` as one atomic write on the writer thread (group commit, see `writer`).
    async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.writer.write(work).await
    }

    /// Runs `work` on a read-only connection on a reader thread, off the async workers.
    async fn read<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.readers.run(work).await
    }
}

/// "table(column TYPE, ...)" for every table, from the database itself.
/// Brings a database made by an earlier version up to `SCHEMA` (whose `CREATE TABLE IF NOT EXISTS` leaves
/// existing tables as they are).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_created_by: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('relations') WHERE name = 'created_by'",
        [],
        |row| row.get(0),
    )?;
    if !has_created_by {
        conn.execute_batch("ALTER TABLE relations ADD COLUMN created_by TEXT NOT NULL DEFAULT ''")?;
    }
    let has_point_id: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('agent_state') WHERE name = 'point_id'",
        [],
        |row| row.get(0),
    )?;
    if !has_point_id {
        // Entries written before state was embedded get their point id and vector at their next write.
        conn.execute_batch(
            "ALTER TABLE agent_state ADD COLUMN point_id TEXT; ALTER TABLE agent_state ADD COLUMN embedding BLOB;",
        )?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS agent_state_by_point ON agent_state(point_id)")?;
    count_live_contexts(conn)
}

/// Keeps the number of live contexts in `live_counts`, by triggers on `contexts`: counting them scans the
/// table (0.8 s at a million rows), and the item gauges are refreshed every 30 s and on every `/metrics`
/// scrape. A database without the row is counted once, in the transaction that adds the triggers (a second
/// process opening it at the same moment counts again, under the same write lock, and keeps the first row).
fn count_live_contexts(conn: &Connection) -> rusqlite::Result<()> {
    let counted: bool =
        conn.query_row("SELECT COUNT(*) > 0 FROM live_counts WHERE name = 'contexts'", [], |row| row.get(0))?;
    if counted {
        return Ok(());
    }
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TRIGGER IF NOT EXISTS contexts_counted_on_insert AFTER INSERT ON contexts WHEN new.deleted = 0
         BEGIN UPDATE live_counts SET n = n + 1 WHERE name = 'contexts'; END;
         CREATE TRIGGER IF NOT EXISTS contexts_counted_on_delete AFTER DELETE ON contexts WHEN old.deleted = 0
         BEGIN UPDATE live_counts SET n = n - 1 WHERE name = 'contexts'; END;
         CREATE TRIGGER IF NOT EXISTS contexts_counted_on_update AFTER UPDATE OF deleted ON contexts
         WHEN old.deleted <> new.deleted
         BEGIN UPDATE live_counts SET n = n + old.deleted - new.deleted WHERE name = 'contexts'; END;
         INSERT OR IGNORE INTO live_counts (name, n) SELECT 'contexts', COUNT(*) FROM contexts WHERE deleted = 0;
         COMMIT;",
    )
}

fn describe_tables(conn: &Connection) -> rusqlite::Result<String> {
    let mut tables = conn.prepare(
        "SELECT m.name, group_concat(p.name || ' ' || p.type, ', ') FROM sqlite_master m \
         JOIN pragma_table_info(m.name) p WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite_%' \
         AND m.name <> 'live_counts' \
         GROUP BY m.name ORDER BY m.name",
    )?;
    let described = tables
        .query_map([], |row| Ok(format!("{}({})", row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(described.join("; "))
}

#[async_trait]
impl GraphBackend for SqliteGraphStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        Some(PoolStatus { max: self.readers.threads(), in_use: self.readers.busy() })
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        self.read(|conn| {
            let count = |sql: &str| -> rusqlite::Result<u64> {
                conn.query_row(sql, [], |row| row.get::<_, i64>(0)).map(|n| n as u64)
            };
            Ok(StoreCounts {
                sessions: count("SELECT COUNT(*) FROM sessions")?,
                contexts: count("SELECT n FROM live_counts WHERE name = 'contexts'")?,
                agent_states: count("SELECT COUNT(*) FROM agent_state")?,
                pending_index: count("SELECT COUNT(*) FROM index_journal")?,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::rows::*;
    use super::*;
    use crate::domain::{ContextFilter, ReadScope, Timestamp};
    use rusqlite::params_from_iter;

    #[test]
    fn cached_list_statements_are_not_prepared_again_per_call() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let scope = ReadScope { agent_id: "agent-a".into(), admin: false, sessions: None };
        for (n, session) in ["s1", "s2", "s3", "s4"].into_iter().enumerate() {
            let filter = ContextFilter {
                session_id: Some(session.into()),
                scope: scope.clone(),
                now: Timestamp(1_000 + n as i64),
                ..ContextFilter::default()
            };
            let (conditions, values) = filter_sql(&filter);
            let mut statement = conn.prepare_cached(&list_contexts_sql(&conditions, 20)).unwrap();
            let rows = statement.query_map(params_from_iter(values.iter()), context_from_row).unwrap().count();
            assert_eq!(rows, 0);
            assert_eq!(statement.get_status(rusqlite::StatementStatus::RePrepare), 0, "call {n}");
        }
        // The control: the same query with a bound LIMIT is prepared again on every call (binding the LIMIT
        // expires the plan that looked at it).
        let (conditions, mut values) = filter_sql(&ContextFilter { scope, ..ContextFilter::default() });
        values.push(20i64.into());
        let bound = format!("{} LIMIT ?", list_contexts_sql(&conditions, 20).trim_end_matches(" LIMIT 20"));
        for _ in 0..3 {
            let mut statement = conn.prepare_cached(&bound).unwrap();
            statement.query_map(params_from_iter(values.iter()), context_from_row).unwrap().for_each(drop);
        }
        let statement = conn.prepare_cached(&bound).unwrap();
        assert_eq!(statement.get_status(rusqlite::StatementStatus::RePrepare), 3, "{bound}");
    }

    /// The triggers' count equals a scan through inserts, upserts, soft deletes, restores, hard deletes and
    /// a rolled-back write, and a database made before the count gets it, counted, when it opens.
    #[test]
    fn live_context_count_follows_every_kind_of_write() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap(); // the table, but no triggers yet: a database made before them
        let insert = |id: &str, deleted: i64| {
            conn.execute(
                "INSERT INTO contexts (id, session_id, agent_id, type, content, tags, metadata, visibility, \
                 created_at, updated_at, version, content_hash, embedding, deleted) \
                 VALUES (?1, 's', 'a', 'note', 'text', '[]', '{}', 'public', 1, 1, 1, 'h', x'00', ?2) \
                 ON CONFLICT(id) DO UPDATE SET deleted = 0",
                rusqlite::params![id, deleted],
            )
            .unwrap()
        };
        conn.execute_batch("PRAGMA foreign_keys = OFF;").unwrap();
        for id in ["a", "b", "c"] {
            insert(id, 0);
        }
        insert("gone", 1);
        migrate(&conn).unwrap();
        let counted = || -> (i64, i64) {
            let counted = conn.query_row("SELECT n FROM live_counts WHERE name = 'contexts'", [], |r| r.get(0));
            let scanned = conn.query_row("SELECT COUNT(*) FROM contexts WHERE deleted = 0", [], |r| r.get(0));
            (counted.unwrap(), scanned.unwrap())
        };
        assert_eq!(counted(), (3, 3), "counted when the database opened");
        migrate(&conn).unwrap();
        assert_eq!(counted(), (3, 3), "not counted again");

        insert("d", 0);
        insert("a", 0); // an upsert of a live row
        insert("gone", 0); // an upsert that revives a deleted row
        assert_eq!(counted(), (5, 5));
        conn.execute("UPDATE contexts SET deleted = 1 WHERE id IN ('a', 'b')", []).unwrap();
        conn.execute("UPDATE contexts SET deleted = 1 WHERE id = 'a'", []).unwrap();
        conn.execute("UPDATE contexts SET content = 'new' WHERE id = 'c'", []).unwrap();
        assert_eq!(counted(), (3, 3));
        conn.execute("UPDATE contexts SET deleted = 0 WHERE id = 'b'", []).unwrap();
        conn.execute("DELETE FROM contexts WHERE id IN ('a', 'c')", []).unwrap();
        assert_eq!(counted(), (3, 3));
        conn.execute_batch("SAVEPOINT w; DELETE FROM contexts; ROLLBACK TO w; RELEASE w;").unwrap();
        assert_eq!(counted(), (3, 3), "a rolled-back write leaves the count");
    }
}
