//! Identity: principals and permissions, API keys, JWTs, and the `Authenticator` that turns a bearer
//! credential into a `Principal`.

mod keys;
mod principal;
mod tokens;

use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use keys::{KeyBackend, KeyRecord, KeyStore, NewKey, SqliteKeys, StoredKey, is_api_key};
pub use principal::{Permission, Permissions, Principal};
pub use tokens::{Claims, TokenIssuer, load_secret};

use crate::domain::Timestamp;
use crate::error::{ServiceError, ServiceResult};

/// Why a credential was not accepted: missing or invalid (HTTP 401; the distinction goes into
/// `WWW-Authenticate`), or not checkable now because the key store does not answer (HTTP 503: the caller is
/// not at fault and is not counted as a failed authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
    Unavailable(String),
}

impl AuthFailure {
    /// A key-store error means "cannot check now": never a pass, never counted against the caller (an
    /// unknown key is not an error, it is `Ok(None)`).
    fn from_store(err: crate::error::StoreError) -> Self {
        tracing::warn!(error = %err, "key store error while checking a credential");
        AuthFailure::Unavailable(err.to_string())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// An API key (`cs_...`).
    pub api_key: String,
    /// Ask for fewer permissions than the key has (read, write, query, admin). Default: all of the key's.
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
    /// Token lifetime in seconds, 60 up to the configured maximum (default: the maximum).
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct TokenResponse {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    pub token_type: String,
    pub expires_at: Timestamp,
    pub agent_id: String,
    pub permissions: Vec<String>,
}

pub struct AuthSettings<'a> {
    /// Where the JWT secret is kept when not configured.
    pub data_dir: &'a Path,
    pub jwt_secret: Option<&'a str>,
    pub audience: &'a str,
    pub issuer: &'a str,
    pub token_ttl_seconds: i64,
}

pub struct Authenticator {
    keys: KeyStore,
    tokens: TokenIssuer,
    max_ttl_seconds: i64,
    /// Recently verified credentials (keyed by their sha256) -> principal. Revocations through this
    /// authenticator clear it at once; a revocation by another process (another replica, the `keys` CLI)
    /// is seen within `VERIFIED_TTL`.
    verified: moka::sync::Cache<Vec<u8>, Principal>,
}

/// How long a verified credential is trusted without looking at the key store again: the documented bound
/// on how long a key revoked elsewhere keeps working here.
pub const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(1);

fn principal_of(key: &KeyRecord, permissions: Permissions) -> Principal {
    Principal {
        agent_id: key.agent_id.clone(),
        agent_type: key.agent_type.clone(),
        permissions,
        sessions: key.sessions.clone(),
        trusted: false,
    }
}

impl Authenticator {
    pub fn open(settings: &AuthSettings<'_>, keys: KeyStore) -> ServiceResult<Self> {
        let secret = load_secret(settings.jwt_secret, settings.data_dir)?;
        Ok(Self {
            keys,
            tokens: TokenIssuer::new(&secret, settings.audience, settings.issuer),
            max_ttl_seconds: settings.token_ttl_seconds,
            verified: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(VERIFIED_TTL).build(),
        })
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    pub fn tokens(&self) -> &TokenIssuer {
        &self.tokens
    }

    /// On a first start with no active key, creates an admin key and returns it (to be shown once).
    /// Atomic in the key store, so of replicas starting together on one store exactly one creates it.
    pub async fn ensure_admin_key(&self) -> ServiceResult<Option<String>> {
        let new = NewKey {
            agent_id: "admin".into(),
            agent_type: "admin".into(),
            permissions: Permissions::all(),
            sessions: None,
        };
        Ok(self.keys.create_first(&new).await?.map(|(_, key)| key))
    }

    /// Revokes a key; it and every token minted from it stop working at once.
    pub async fn revoke(&self, key_id: &str) -> ServiceResult<()> {
        self.keys.revoke(key_id).await.map_err(|err| match err {
            crate::error::StoreError::NotFound => ServiceError::NotFound(format!("key {key_id}")),
            other => other.into(),
        })?;
        self.verified.invalidate_all();
        Ok(())
    }

    fn cache_key(credential: &str) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(credential.as_bytes()).to_vec()
    }

    /// The principal of a credential verified moments ago, without touching the key store.
    pub fn recently_verified(&self, bearer: Option<&str>) -> Option<Principal> {
        let credential = bearer.map(str::trim).filter(|c| !c.is_empty())?;
        let principal = self.verified.get(&Self::cache_key(credential))?;
        Some(principal)
    }

    /// The principal of a bearer credential: an API key, or a JWT whose key is still active. A JWT's
    /// permissions are those it was minted with, never more than its key has now.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, AuthFailure> {
        let credential = bearer.map(str::trim).filter(|c| !c.is_empty()).ok_or(AuthFailure::Missing)?;
        let (principal, cacheable) = self.verify_credential(credential).await?;
        if cacheable {
            self.verified.insert(Self::cache_key(credential), principal.clone());
        }
        Ok(principal)
    }

    /// The principal, and whether it may be cached (a token about to expire may not: the cache must
    /// never outlive it).
    async fn verify_credential(&self, credential: &str) -> Result<(Principal, bool), AuthFailure> {
        if is_api_key(credential) {
            let key =
                self.keys.verify(credential).await.map_err(AuthFailure::from_store)?.ok_or(AuthFailure::Invalid)?;
            return Ok((principal_of(&key, key.permissions), true));
        }
        let claims = self.tokens.verify(credential).ok_or(AuthFailure::Invalid)?;
        let key = self.keys.active(&claims.kid).await.map_err(AuthFailure::from_store)?.ok_or(AuthFailure::Invalid)?;
        if key.agent_id != claims.sub {
            return Err(AuthFailure::Invalid);
        }
        let granted = Permissions::parse(&claims.perms.join(",")).map_err(|_| AuthFailure::Invalid)?;
        let seconds_left = claims.exp - Timestamp::now().millis() / 1000;
        let cacheable = seconds_left > VERIFIED_TTL.as_secs() as i64 + 1;
        Ok((principal_of(&key, key.permissions.intersect(granted)), cacheable))
    }

    /// Exchanges an API key for a short-lived JWT.
    pub async fn exchange(&self, request: TokenRequest) -> ServiceResult<TokenResponse> {
        let key = self
            .keys
            .verify(&request.api_key)
            .await?
            .ok_or_else(|| ServiceError::Unauthenticated("the API key is unknown or revoked".into()))?;
        let asked = match &request.permissions {
            None => key.permissions,
            Some(names) => Permissions::parse(&names.join(",")).map_err(ServiceError::InvalidArgument)?,
        };
        let ttl = request.ttl_seconds.unwrap_or(self.max_ttl_seconds);
        if !(60..=self.max_ttl_seconds).contains(&ttl) {
            return Err(ServiceError::invalid(format!("ttl_seconds must be between 60 and {}", self.max_ttl_seconds)));
        }
        let permissions = key.permissions.intersect(asked);
        let (token, claims) = self.tokens.mint(&key, permissions, ttl)?;
        Ok(TokenResponse {
            token,
            token_type: "Bearer".into(),
            expires_at: Timestamp(claims.exp * 1000),
            agent_id: key.agent_id,
            permissions: claims.perms,
        })
    }
}

/// Keeps a long-lived stream (change subscriptions) honest about the credential that opened it: the
/// credential is checked again every `VERIFIED_TTL`, so a revoked key or an expired token ends the stream
/// as it would refuse a request, and a narrowed key narrows what the stream shows.
pub struct CredentialWatch {
    auth: std::sync::Arc<Authenticator>,
    bearer: String,
    next: tokio::time::Instant,
}

impl CredentialWatch {
    pub fn new(auth: std::sync::Arc<Authenticator>, bearer: String) -> Self {
        Self { auth, bearer, next: tokio::time::Instant::now() + VERIFIED_TTL }
    }

    /// Resolves when the next check is due; never without a watch.
    pub async fn due(watch: &Option<Self>) {
        match watch {
            Some(watch) => tokio::time::sleep_until(watch.next).await,
            None => std::future::pending().await,
        }
    }

    /// The principal the credential stands for now, or None when it no longer does (revoked, expired, or
    /// not checkable: the stream ends and the client may open it again).
    pub async fn check(&mut self) -> Option<Principal> {
        self.next = tokio::time::Instant::now() + VERIFIED_TTL;
        match self.auth.recently_verified(Some(&self.bearer)) {
            Some(principal) => Some(principal),
            None => self.auth.authenticate(Some(&self.bearer)).await.ok(),
        }
    }
}

/// The bearer credential of a request's headers, if any.
pub fn bearer_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}
