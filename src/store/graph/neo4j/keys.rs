//! API keys as `(:ApiKey)` nodes, so every replica on this Neo4j authenticates the same keys and sees a
//! revocation (within `auth::VERIFIED_TTL`, how long a replica trusts a credential it verified).

use async_trait::async_trait;
use neo4rs::Row;
use serde::Deserialize;

use super::{Neo4jGraphStore, TxResult, cypher, query, rows};
use crate::auth::{KeyBackend, KeyRecord, StoredKey};
use crate::domain::Timestamp;
use crate::error::{StoreError, StoreResult};

#[derive(Deserialize)]
struct KeyRow {
    key_id: String,
    agent_id: String,
    agent_type: String,
    permissions: String,
    sessions: Option<String>,
    created_at: i64,
    revoked: bool,
}

fn record_of(row: &Row) -> TxResult<KeyRecord> {
    let key: KeyRow = row.get("key")?;
    Ok(StoredKey {
        key_id: key.key_id,
        agent_id: key.agent_id,
        agent_type: key.agent_type,
        permissions: key.permissions,
        sessions: key.sessions,
        created_at: key.created_at,
        revoked: key.revoked,
    }
    .into_record())
}

fn insert_statement(record: &KeyRecord, secret_hash: &[u8]) -> neo4rs::Query {
    let stored = StoredKey::of(record);
    query(cypher::KEY_INSERT)
        .param("key_id", stored.key_id)
        .param("secret_hash", hex::encode(secret_hash))
        .param("agent_id", stored.agent_id)
        .param("agent_type", stored.agent_type)
        .param("permissions", stored.permissions)
        .param("sessions", stored.sessions)
        .param("created_at", stored.created_at)
}

#[async_trait]
impl KeyBackend for Neo4jGraphStore {
    async fn insert(&self, record: &KeyRecord, secret_hash: &[u8]) -> StoreResult<()> {
        transaction!(self, |txn| {
            txn.run(insert_statement(record, secret_hash)).await?;
            Ok(())
        })
    }

    async fn insert_if_none_active(&self, record: &KeyRecord, secret_hash: &[u8]) -> StoreResult<bool> {
        transaction!(self, |txn| {
            let lock = query(cypher::KEY_FIRST_LOCK).param("name", "api_keys").param("now", Timestamp::now().millis());
            let active: i64 = rows(txn, lock)
                .await?
                .first()
                .ok_or_else(|| StoreError::Backend("the key store lock returned no row".into()))?
                .get("active")?;
            if active > 0 {
                return Ok(false);
            }
            txn.run(insert_statement(record, secret_hash)).await?;
            Ok(true)
        })
    }

    async fn list(&self) -> StoreResult<Vec<KeyRecord>> {
        read!(self, |txn| rows(txn, query(cypher::KEY_LIST)).await?.iter().map(record_of).collect())
    }

    async fn revoke(&self, key_id: &str) -> StoreResult<()> {
        transaction!(self, |txn| {
            let changed = rows(txn, query(cypher::KEY_REVOKE).param("key_id", key_id)).await?;
            if changed.is_empty() { Err(StoreError::NotFound.into()) } else { Ok(()) }
        })
    }

    async fn active(&self, key_id: &str) -> StoreResult<Option<(Vec<u8>, KeyRecord)>> {
        read!(self, |txn| {
            let found = rows(txn, query(cypher::KEY_ACTIVE).param("key_id", key_id)).await?;
            let Some(row) = found.first() else { return Ok(None) };
            let hash: String = row.get("secret_hash")?;
            // An unreadable hash matches no secret.
            let hash = hex::decode(hash).unwrap_or_default();
            Ok(Some((hash, record_of(row)?)))
        })
    }
}
