//! API keys: random secrets shown once, stored only as sha256 hashes, each bound to an agent id, an agent
//! type, permissions and optionally a set of sessions. Where they are stored is a `KeyBackend`: the data
//! dir's `keys.sqlite3` on the embedded default (`SqliteKeys`), the graph itself on Neo4j, so every replica
//! authenticates the same keys.
//!
//! A key reads `cs_<key id>_<secret>`: the id finds the record, the secret is checked against its hash in
//! constant time. Secrets are 256 random bits, so a plain sha256 is enough (no password hashing needed).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Permissions;
use crate::domain::Timestamp;
use crate::error::{StoreError, StoreResult};

const PREFIX: &str = "cs_";

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub agent_id: String,
    pub agent_type: String,
    pub permissions: Permissions,
    pub sessions: Option<Vec<String>>,
    pub created_at: Timestamp,
    pub revoked: bool,
}

/// What a new key is for.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub agent_id: String,
    pub agent_type: String,
    pub permissions: Permissions,
    pub sessions: Option<Vec<String>>,
}

/// Where keys are kept. Backends store and find records; the rules (ids, secrets, hashes, the first admin
/// key) are `KeyStore`'s, the same for every backend.
#[async_trait]
pub trait KeyBackend: Send + Sync + 'static {
    /// Stores a new key record with the hash of its secret.
    async fn insert(&self, record: &KeyRecord, secret_hash: &[u8]) -> StoreResult<()>;
    /// Stores the record only if no active key exists, atomically: of replicas starting together on one
    /// store, exactly one creates the first key. Returns whether it was stored.
    async fn insert_if_none_active(&self, record: &KeyRecord, secret_hash: &[u8]) -> StoreResult<bool>;
    /// Every key, oldest first.
    async fn list(&self) -> StoreResult<Vec<KeyRecord>>;
    /// Marks a key revoked; `NotFound` when no such key exists.
    async fn revoke(&self, key_id: &str) -> StoreResult<()>;
    /// The active key with this id and the hash of its secret.
    async fn active(&self, key_id: &str) -> StoreResult<Option<(Vec<u8>, KeyRecord)>>;
}

/// API keys over a backend: creation, verification, listing and revocation.
#[derive(Clone)]
pub struct KeyStore {
    backend: Arc<dyn KeyBackend>,
}

/// The embedded backend: `keys.sqlite3` in the data dir.
pub struct SqliteKeys {
    conn: Arc<Mutex<Connection>>,
}

pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("the operating system provides randomness");
    hex::encode(buffer)
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    record_at(row, 0)
}

/// A key record from `COLUMNS` starting at column `at` (see `StoredKey::into_record`).
fn record_at(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<KeyRecord> {
    let stored = StoredKey {
        key_id: row.get(at)?,
        agent_id: row.get(at + 1)?,
        agent_type: row.get(at + 2)?,
        permissions: row.get(at + 3)?,
        sessions: row.get(at + 4)?,
        created_at: row.get(at + 5)?,
        revoked: row.get::<_, i64>(at + 6)? != 0,
    };
    Ok(stored.into_record())
}

/// A key record as backends store it: permissions as `read,write,...`, sessions as JSON text.
pub struct StoredKey {
    pub key_id: String,
    pub agent_id: String,
    pub agent_type: String,
    pub permissions: String,
    pub sessions: Option<String>,
    pub created_at: i64,
    pub revoked: bool,
}

impl StoredKey {
    pub fn of(record: &KeyRecord) -> Self {
        Self {
            key_id: record.key_id.clone(),
            agent_id: record.agent_id.clone(),
            agent_type: record.agent_type.clone(),
            permissions: record.permissions.names().join(","),
            sessions: record.sessions.as_ref().map(|s| serde_json::to_string(s).unwrap_or_default()),
            created_at: record.created_at.millis(),
            revoked: record.revoked,
        }
    }

    /// The record. It fails closed: permissions or a session list that cannot be read give no permission
    /// and no session (an unreadable session list never means "all").
    pub fn into_record(self) -> KeyRecord {
        let key_id = self.key_id;
        let permissions = Permissions::parse(&self.permissions).unwrap_or_else(|err| {
            tracing::warn!(%key_id, %err, "API key with unreadable permissions: it is granted none");
            Permissions::default()
        });
        let sessions = self.sessions.map(|text| {
            serde_json::from_str::<Vec<String>>(&text).unwrap_or_else(|err| {
                tracing::warn!(%key_id, %err, "API key with an unreadable session list: it may use no session");
                Vec::new()
            })
        });
        KeyRecord {
            key_id,
            agent_id: self.agent_id,
            agent_type: self.agent_type,
            permissions,
            sessions,
            created_at: Timestamp(self.created_at),
            revoked: self.revoked,
        }
    }
}

const COLUMNS: &str = "key_id, agent_id, agent_type, permissions, sessions, created_at, revoked";

impl SqliteKeys {
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("keys.sqlite3")
    }

    pub fn open(data_dir: &Path) -> StoreResult<Self> {
        crate::private_files::private_dir(data_dir)
            .map_err(|e| StoreError::Backend(format!("create {}: {e}", data_dir.display())))?;
        let conn = Connection::open(Self::path_in(data_dir))?;
        crate::private_files::private_file(&Self::path_in(data_dir))
            .map_err(|e| StoreError::Backend(format!("restrict {}: {e}", data_dir.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS api_keys (
                 key_id      TEXT PRIMARY KEY,
                 secret_hash BLOB NOT NULL,
                 agent_id    TEXT NOT NULL,
                 agent_type  TEXT NOT NULL,
                 permissions TEXT NOT NULL,
                 sessions    TEXT,
                 created_at  INTEGER NOT NULL,
                 revoked     INTEGER NOT NULL DEFAULT 0
             );",
        )?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    /// Runs `work` on the connection on a blocking thread (the file is local, but a disk can stall).
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let conn = self.conn.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("key store task: {e}")))?;
        Ok(done?)
    }
}

fn insert_row(conn: &Connection, stored: &StoredKey, secret_hash: &[u8]) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO api_keys (key_id, secret_hash, agent_id, agent_type, permissions, sessions, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            stored.key_id,
            secret_hash,
            stored.agent_id,
            stored.agent_type,
            stored.permissions,
            stored.sessions,
            stored.created_at
        ],
    )
}

#[async_trait]
impl KeyBackend for SqliteKeys {
    async fn insert(&self, record: &KeyRecord, secret_hash: &[u8]) -> StoreResult<()> {
        let (stored, hash) = (StoredKey::of(record), secret_hash.to_vec());
        self.with(move |conn| insert_row(conn, &stored, &hash).map(drop)).await
    }

    async fn insert_if_none_active(&self, record: &KeyRecord, secret_hash: &[u8]) -> StoreResult<bool> {
        let (stored, hash) = (StoredKey::of(record), secret_hash.to_vec());
        self.with(move |conn| {
            // IMMEDIATE takes the write lock first, so processes sharing the file see one another's key.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let active: i64 = tx.query_row("SELECT COUNT(*) FROM api_keys WHERE revoked = 0", [], |r| r.get(0))?;
            if active > 0 {
                return Ok(false);
            }
            insert_row(&tx, &stored, &hash)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn list(&self) -> StoreResult<Vec<KeyRecord>> {
        self.with(|conn| {
            let mut statement = conn.prepare(&format!("SELECT {COLUMNS} FROM api_keys ORDER BY created_at"))?;
            let rows = statement.query_map([], record_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn revoke(&self, key_id: &str) -> StoreResult<()> {
        let key_id = key_id.to_string();
        let changed = self
            .with(move |conn| conn.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?1", params![key_id]))
            .await?;
        if changed == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn active(&self, key_id: &str) -> StoreResult<Option<(Vec<u8>, KeyRecord)>> {
        let key_id = key_id.to_string();
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT secret_hash, {COLUMNS} FROM api_keys WHERE key_id = ?1 AND revoked = 0"
            ))?
            .query_row(params![key_id], |row| Ok((row.get::<_, Vec<u8>>(0)?, record_at(row, 1)?)))
            .optional()
        })
        .await
    }
}

/// A fresh key for `new`: its record and the full key string (`cs_<id>_<secret>`), never stored.
fn mint(new: &NewKey) -> (KeyRecord, String, Vec<u8>) {
    let key_id = random_hex(6);
    let secret = random_hex(32);
    let record = KeyRecord {
        key_id: key_id.clone(),
        agent_id: new.agent_id.clone(),
        agent_type: new.agent_type.clone(),
        permissions: new.permissions,
        sessions: new.sessions.clone(),
        created_at: Timestamp::now(),
        revoked: false,
    };
    (record, format!("{PREFIX}{key_id}_{secret}"), digest(&secret))
}

impl KeyStore {
    pub fn new(backend: Arc<dyn KeyBackend>) -> Self {
        Self { backend }
    }

    /// The embedded default: `keys.sqlite3` in the data dir.
    pub fn sqlite(data_dir: &Path) -> StoreResult<Self> {
        Ok(Self::new(Arc::new(SqliteKeys::open(data_dir)?)))
    }

    /// Creates a key; returns its record and the full key, which is never stored and cannot be shown again.
    pub async fn create(&self, new: &NewKey) -> StoreResult<(KeyRecord, String)> {
        let (record, key, hash) = mint(new);
        self.backend.insert(&record, &hash).await?;
        Ok((record, key))
    }

    /// Creates the key only if no active key exists (the first start's admin key); None when one does.
    pub async fn create_first(&self, new: &NewKey) -> StoreResult<Option<(KeyRecord, String)>> {
        let (record, key, hash) = mint(new);
        Ok(self.backend.insert_if_none_active(&record, &hash).await?.then_some((record, key)))
    }

    pub async fn list(&self) -> StoreResult<Vec<KeyRecord>> {
        self.backend.list().await
    }

    /// Revokes a key; `NotFound` when no such key exists.
    pub async fn revoke(&self, key_id: &str) -> StoreResult<()> {
        self.backend.revoke(key_id).await
    }

    /// The active key with this id.
    pub async fn active(&self, key_id: &str) -> StoreResult<Option<KeyRecord>> {
        Ok(self.backend.active(key_id).await?.map(|(_, record)| record))
    }

    /// The active key a presented key string belongs to, if its secret matches.
    pub async fn verify(&self, presented: &str) -> StoreResult<Option<KeyRecord>> {
        let Some((key_id, secret)) = presented.strip_prefix(PREFIX).and_then(|rest| rest.split_once('_')) else {
            return Ok(None);
        };
        let stored = self.backend.active(key_id).await?;
        Ok(stored.and_then(|(hash, record)| constant_time_eq(&hash, &digest(secret)).then_some(record)))
    }
}

pub fn is_api_key(presented: &str) -> bool {
    presented.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_whose_session_list_cannot_be_read_may_use_no_session() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Arc::new(SqliteKeys::open(dir.path()).unwrap());
        let keys = KeyStore::new(sqlite.clone());
        let new = NewKey {
            agent_id: "alice".into(),
            agent_type: "test".into(),
            permissions: Permissions { read: true, ..Default::default() },
            sessions: Some(vec!["s1".into()]),
        };
        let (record, key) = keys.create(&new).await.unwrap();
        assert_eq!(keys.verify(&key).await.unwrap().unwrap().sessions, Some(vec!["s1".to_string()]));
        let id = record.key_id.clone();
        sqlite
            .with(move |conn| conn.execute("UPDATE api_keys SET sessions = '[\"s1\"' WHERE key_id = ?1", params![id]))
            .await
            .unwrap();
        let verified = keys.verify(&key).await.unwrap().expect("the key itself is still valid");
        assert_eq!(verified.sessions, Some(Vec::new()), "an unreadable list never means every session");
        assert_eq!(keys.list().await.unwrap()[0].sessions, Some(Vec::new()));
        let id = record.key_id.clone();
        sqlite
            .with(move |conn| {
                conn.execute("UPDATE api_keys SET permissions = 'read,root' WHERE key_id = ?1", params![id])
            })
            .await
            .unwrap();
        assert_eq!(keys.verify(&key).await.unwrap().unwrap().permissions, Permissions::default());
    }

    #[tokio::test]
    async fn of_processes_racing_for_the_first_key_exactly_one_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        // Separate connections to one file, as separate processes would have.
        let stores: Vec<KeyStore> = (0..6).map(|_| KeyStore::sqlite(dir.path()).unwrap()).collect();
        let admin = NewKey {
            agent_id: "admin".into(),
            agent_type: "admin".into(),
            permissions: Permissions::all(),
            sessions: None,
        };
        let created = futures::future::join_all(stores.iter().map(|keys| keys.create_first(&admin))).await;
        let created: Vec<_> = created.into_iter().filter_map(Result::unwrap).collect();
        assert_eq!(created.len(), 1, "one first key, not one per racer");
        assert!(stores[0].verify(&created[0].1).await.unwrap().is_some());
        assert!(stores[3].create_first(&admin).await.unwrap().is_none(), "an active key exists now");
        stores[2].revoke(&created[0].0.key_id).await.unwrap();
        assert!(stores[1].verify(&created[0].1).await.unwrap().is_none(), "revoked everywhere");
        assert!(stores[4].create_first(&admin).await.unwrap().is_some(), "with every key revoked, a new first key");
    }
}
