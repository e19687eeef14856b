//! API keys: random secrets shown once, stored only as sha256 hashes in `keys.sqlite3` in the data dir,
//! each bound to an agent id, an agent type, permissions and optionally a set of sessions.
//!
//! A key reads `cs_<key id>_<secret>`: the id finds the row, the secret is checked against its hash in
//! constant time. Secrets are 256 random bits, so a plain sha256 is enough (no password hashing needed).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

pub struct KeyStore {
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

/// A key record from `COLUMNS` starting at column `at`. It fails closed: permissions or a session list
/// that cannot be read give no permission and no session (an unreadable session list never means "all").
fn record_at(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<KeyRecord> {
    let key_id: String = row.get(at)?;
    let permissions: String = row.get(at + 3)?;
    let sessions: Option<String> = row.get(at + 4)?;
    let permissions = Permissions::parse(&permissions).unwrap_or_else(|err| {
        tracing::warn!(%key_id, %err, "API key with unreadable permissions: it is granted none");
        Permissions::default()
    });
    let sessions = sessions.map(|text| {
        serde_json::from_str::<Vec<String>>(&text).unwrap_or_else(|err| {
            tracing::warn!(%key_id, %err, "API key with an unreadable session list: it may use no session");
            Vec::new()
        })
    });
    Ok(KeyRecord {
        key_id,
        agent_id: row.get(at + 1)?,
        agent_type: row.get(at + 2)?,
        permissions,
        sessions,
        created_at: Timestamp(row.get(at + 5)?),
        revoked: row.get::<_, i64>(at + 6)? != 0,
    })
}

const COLUMNS: &str = "key_id, agent_id, agent_type, permissions, sessions, created_at, revoked";

impl KeyStore {
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

    fn with<T>(&self, work: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(work(&conn)?)
    }

    /// Creates a key; returns its record and the full key, which is never stored and cannot be shown again.
    pub fn create(&self, new: &NewKey) -> StoreResult<(KeyRecord, String)> {
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
        self.with(|conn| {
            conn.execute(
                "INSERT INTO api_keys (key_id, secret_hash, agent_id, agent_type, permissions, sessions, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    record.key_id,
                    digest(&secret),
                    record.agent_id,
                    record.agent_type,
                    record.permissions.names().join(","),
                    record.sessions.as_ref().map(|s| serde_json::to_string(s).unwrap_or_default()),
                    record.created_at.millis()
                ],
            )
        })?;
        Ok((record, format!("{PREFIX}{key_id}_{secret}")))
    }

    pub fn list(&self) -> StoreResult<Vec<KeyRecord>> {
        self.with(|conn| {
            let mut statement = conn.prepare(&format!("SELECT {COLUMNS} FROM api_keys ORDER BY created_at"))?;
            let rows = statement.query_map([], record_from_row)?;
            rows.collect()
        })
    }

    /// Revokes a key; `NotFound` when no such key exists.
    pub fn revoke(&self, key_id: &str) -> StoreResult<()> {
        let changed =
            self.with(|conn| conn.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?1", params![key_id]))?;
        if changed == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    pub fn active_count(&self) -> StoreResult<u64> {
        self.with(|conn| conn.query_row("SELECT COUNT(*) FROM api_keys WHERE revoked = 0", [], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
    }

    /// The active key with this id.
    pub fn active(&self, key_id: &str) -> StoreResult<Option<KeyRecord>> {
        self.with(|conn| {
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM api_keys WHERE key_id = ?1 AND revoked = 0"))?
                .query_row(params![key_id], record_from_row)
                .optional()
        })
    }

    /// The active key a presented key string belongs to, if its secret matches.
    pub fn verify(&self, presented: &str) -> StoreResult<Option<KeyRecord>> {
        let Some((key_id, secret)) = presented.strip_prefix(PREFIX).and_then(|rest| rest.split_once('_')) else {
            return Ok(None);
        };
        let stored: Option<(Vec<u8>, KeyRecord)> = self.with(|conn| {
            conn.prepare_cached(&format!(
                "SELECT secret_hash, {COLUMNS} FROM api_keys WHERE key_id = ?1 AND revoked = 0"
            ))?
            .query_row(params![key_id], |row| Ok((row.get::<_, Vec<u8>>(0)?, record_at(row, 1)?)))
            .optional()
        })?;
        Ok(stored.and_then(|(hash, record)| constant_time_eq(&hash, &digest(secret)).then_some(record)))
    }
}

pub fn is_api_key(presented: &str) -> bool {
    presented.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_whose_session_list_cannot_be_read_may_use_no_session() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(dir.path()).unwrap();
        let new = NewKey {
            agent_id: "alice".into(),
            agent_type: "test".into(),
            permissions: Permissions { read: true, ..Default::default() },
            sessions: Some(vec!["s1".into()]),
        };
        let (record, key) = keys.create(&new).unwrap();
        assert_eq!(keys.verify(&key).unwrap().unwrap().sessions, Some(vec!["s1".to_string()]));
        keys.with(|conn| {
            conn.execute("UPDATE api_keys SET sessions = '[\"s1\"' WHERE key_id = ?1", params![record.key_id])
        })
        .unwrap();
        let verified = keys.verify(&key).unwrap().expect("the key itself is still valid");
        assert_eq!(verified.sessions, Some(Vec::new()), "an unreadable list never means every session");
        assert_eq!(keys.list().unwrap()[0].sessions, Some(Vec::new()));
        keys.with(|conn| {
            conn.execute("UPDATE api_keys SET permissions = 'read,root' WHERE key_id = ?1", params![record.key_id])
        })
        .unwrap();
        assert_eq!(keys.verify(&key).unwrap().unwrap().permissions, Permissions::default());
    }
}
