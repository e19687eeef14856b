//! Short-lived JWTs (HS256, jsonwebtoken) minted from an API key. The secret comes from settings or is
//! generated once into `jwt.secret` in the data dir. Expiry, audience and issuer are checked.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

use super::keys::random_hex;
use super::{KeyRecord, Permissions};
use crate::domain::Timestamp;
use crate::error::{StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The agent id.
    pub sub: String,
    /// The API key the token was minted from (checked to be unrevoked on every use).
    pub kid: String,
    pub agent_type: String,
    /// Granted permissions (a subset of the key's).
    pub perms: Vec<String>,
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
}

pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    audience: String,
    issuer: String,
}

/// The signing secret: the configured one, else the one kept in the data dir (created on first use).
pub fn load_secret(configured: Option<&str>, data_dir: &Path) -> StoreResult<String> {
    if let Some(secret) = configured {
        return Ok(secret.to_string());
    }
    let path = data_dir.join("jwt.secret");
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => Ok(secret.trim().to_string()),
        _ => {
            crate::private_files::private_dir(data_dir).map_err(|e| StoreError::Backend(e.to_string()))?;
            let secret = random_hex(32);
            crate::private_files::write_private(&path, secret.as_bytes())
                .map_err(|e| StoreError::Backend(format!("cannot write {}: {e}", path.display())))?;
            Ok(secret)
        }
    }
}

impl TokenIssuer {
    pub fn new(secret: &str, audience: &str, issuer: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            audience: audience.to_string(),
            issuer: issuer.to_string(),
        }
    }

    /// Mints a token for `key` with `permissions` (already limited to the key's), valid `ttl_seconds`.
    pub fn mint(&self, key: &KeyRecord, permissions: Permissions, ttl_seconds: i64) -> StoreResult<(String, Claims)> {
        let now = Timestamp::now().millis() / 1000;
        let claims = Claims {
            sub: key.agent_id.clone(),
            kid: key.key_id.clone(),
            agent_type: key.agent_type.clone(),
            perms: permissions.names().into_iter().map(str::to_string).collect(),
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
            iat: now,
            exp: now + ttl_seconds,
        };
        self.sign(&claims).map(|token| (token, claims))
    }

    /// Signs arbitrary claims (tests use it to build expired or foreign tokens).
    pub fn sign(&self, claims: &Claims) -> StoreResult<String> {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| StoreError::Backend(format!("cannot sign token: {e}")))
    }

    /// The claims of a valid token; `None` for a bad signature, expiry, audience or issuer.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        decode::<Claims>(token, &self.decoding, &self.validation).ok().map(|data| data.claims)
    }
}
