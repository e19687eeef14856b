//! Domain types: sessions, contexts, agent state, their requests, and validation with documented limits.
//!
//! Requests double as the tool input schemas (their field docs are what agents read), so every field is
//! documented. Validation lives in `parse`-style functions; nothing here does I/O.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::error::{ServiceError, ServiceResult};

/// Documented limits. Every violation is an `invalid_argument` (or `payload_too_large`) error and
/// changes nothing.
pub mod limits {
    pub const MAX_CONTENT_BYTES: usize = 64 * 1024;
    pub const MAX_METADATA_BYTES: usize = 16 * 1024;
    pub const MAX_STATE_VALUE_BYTES: usize = 64 * 1024;
    pub const MAX_TAGS: usize = 32;
    pub const MAX_TAG_CHARS: usize = 64;
    pub const MAX_ID_CHARS: usize = 128;
    pub const MAX_TYPE_CHARS: usize = 64;
    pub const MAX_QUERY_CHARS: usize = 2048;
    pub const MAX_PURPOSE_CHARS: usize = 4096;
    pub const MAX_LIMIT: usize = 200;
    pub const DEFAULT_LIMIT: usize = 20;
    pub const MAX_CANDIDATES: usize = 1000;
    pub const MAX_RELATED_DEPTH: u32 = 3;
    /// Previous versions one `get_context` returns, by default and at most (`versions_before` pages on).
    pub const DEFAULT_VERSIONS: usize = 20;
    pub const MAX_VERSIONS: usize = 100;
    pub const MAX_TTL_SECONDS: i64 = 10 * 365 * 24 * 3600;
    pub const MAX_FILTER_VALUES: usize = 64;
    /// Metadata keys one filter may test (each is a condition in every backend's query).
    pub const MAX_METADATA_FILTER_KEYS: usize = 32;
}

/// A point in time, stored as milliseconds since the Unix epoch and shown as RFC 3339.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp((OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus_seconds(self, seconds: i64) -> Self {
        Timestamp(self.0.saturating_add(seconds.saturating_mul(1000)))
    }

    pub fn parse(text: &str) -> ServiceResult<Self> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|_| ServiceError::invalid(format!("'{text}' is not an RFC 3339 timestamp")))?;
        Ok(Timestamp((parsed.unix_timestamp_nanos() / 1_000_000) as i64))
    }

    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128 * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string", "format": "date-time", "description": "RFC 3339 timestamp"})
    }
    fn inline_schema() -> bool {
        true
    }
}

/// Who may read a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Every agent that can see the session.
    #[default]
    Public,
    /// Only the author and admins.
    Private,
    /// Only admins.
    AdminOnly,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
            Visibility::AdminOnly => "admin_only",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "public" => Some(Visibility::Public),
            "private" => Some(Visibility::Private),
            "admin_only" => Some(Visibility::AdminOnly),
            _ => None,
        }
    }
}

/// A shared workspace agents collaborate in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Session {
    pub id: String,
    pub purpose: String,
    pub metadata: Map<String, Value>,
    pub created_by: String,
    pub created_at: Timestamp,
}

/// A stored context: text plus metadata, authored by an agent within a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Context {
    pub id: Uuid,
    pub session_id: String,
    pub agent_id: String,
    #[serde(rename = "type")]
    pub context_type: String,
    pub content: String,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    pub visibility: Visibility,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    pub content_hash: String,
}

impl Context {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// A previous version of a context, kept when the context is updated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContextVersion {
    pub id: Uuid,
    pub version: i64,
    #[serde(rename = "type")]
    pub context_type: String,
    pub content: String,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    pub visibility: Visibility,
    pub updated_at: Timestamp,
}

/// A piece of an agent's state, keyed by (agent, optional session, key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentState {
    pub agent_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    pub key: String,
    pub value: Value,
    pub version: i64,
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// A directed, typed relationship between two contexts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Relation {
    pub from_id: Uuid,
    pub to_id: Uuid,
    pub relation: String,
    pub metadata: Map<String, Value>,
    pub created_at: Timestamp,
    /// The agent that made (or last re-made) the link; empty for links older than this field.
    #[serde(default)]
    pub created_by: String,
}

/// sha256 of the content, hex encoded: the dedup key within a session.
pub fn content_hash(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

/// Checks an identifier (session id, agent id, state key, relation name).
pub fn parse_identifier(field: &str, value: &str) -> ServiceResult<String> {
    let valid = !value.is_empty()
        && value.chars().count() <= limits::MAX_ID_CHARS
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '/'));
    if valid {
        Ok(value.to_string())
    } else {
        Err(ServiceError::invalid(format!(
            "{field} must be 1-{} characters of letters, digits and - _ . : @ /",
            limits::MAX_ID_CHARS
        )))
    }
}

pub fn parse_uuid(field: &str, value: &str) -> ServiceResult<Uuid> {
    Uuid::parse_str(value).map_err(|_| ServiceError::invalid(format!("{field} must be a UUID")))
}

pub fn parse_content(content: &str) -> ServiceResult<String> {
    if content.trim().is_empty() {
        return Err(ServiceError::invalid("content must not be empty"));
    }
    if content.len() > limits::MAX_CONTENT_BYTES {
        return Err(ServiceError::PayloadTooLarge(format!(
            "content is {} bytes; the limit is {}",
            content.len(),
            limits::MAX_CONTENT_BYTES
        )));
    }
    Ok(content.to_string())
}

pub fn parse_type(context_type: Option<&str>) -> ServiceResult<String> {
    let value = context_type.unwrap_or("note");
    let valid = !value.is_empty()
        && value.chars().count() <= limits::MAX_TYPE_CHARS
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_string())
    } else {
        Err(ServiceError::invalid(format!(
            "type must be 1-{} characters of letters, digits and - _ .",
            limits::MAX_TYPE_CHARS
        )))
    }
}

/// Tags are trimmed, lower-cased, deduplicated and sorted.
pub fn parse_tags(tags: &[String]) -> ServiceResult<Vec<String>> {
    if tags.len() > limits::MAX_TAGS {
        return Err(ServiceError::invalid(format!("at most {} tags", limits::MAX_TAGS)));
    }
    let mut parsed = Vec::with_capacity(tags.len());
    for tag in tags {
        let tag = tag.trim().to_lowercase();
        if tag.is_empty() || tag.chars().count() > limits::MAX_TAG_CHARS || tag.chars().any(char::is_control) {
            return Err(ServiceError::invalid(format!(
                "each tag must be 1-{} printable characters",
                limits::MAX_TAG_CHARS
            )));
        }
        parsed.push(tag);
    }
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

pub fn parse_metadata(metadata: Option<&Map<String, Value>>) -> ServiceResult<Map<String, Value>> {
    let metadata = metadata.cloned().unwrap_or_default();
    let size = serde_json::to_vec(&metadata).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > limits::MAX_METADATA_BYTES {
        return Err(ServiceError::PayloadTooLarge(format!(
            "metadata is {size} bytes of JSON; the limit is {}",
            limits::MAX_METADATA_BYTES
        )));
    }
    for key in metadata.keys() {
        let valid = !key.is_empty()
            && key.len() <= limits::MAX_ID_CHARS
            && key.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ':' | '@' | '/'));
        if !valid {
            return Err(ServiceError::invalid(format!(
                "metadata keys must be 1-{} characters of letters, digits and _ - : @ /",
                limits::MAX_ID_CHARS
            )));
        }
    }
    Ok(metadata)
}

pub fn parse_ttl(ttl_seconds: Option<i64>, now: Timestamp) -> ServiceResult<Option<Timestamp>> {
    match ttl_seconds {
        None => Ok(None),
        Some(ttl) if (1..=limits::MAX_TTL_SECONDS).contains(&ttl) => Ok(Some(now.plus_seconds(ttl))),
        Some(_) => Err(ServiceError::invalid(format!("ttl_seconds must be between 1 and {}", limits::MAX_TTL_SECONDS))),
    }
}

pub fn parse_limit(limit: Option<usize>) -> ServiceResult<usize> {
    match limit {
        None => Ok(limits::DEFAULT_LIMIT),
        Some(n) if (1..=limits::MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ServiceError::invalid(format!("limit must be between 1 and {}", limits::MAX_LIMIT))),
    }
}

/// Filters shared by listing and searching contexts. All given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextFilterArgs {
    /// Only contexts in this session.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Only contexts of one of these types.
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// Only contexts carrying at least one of these tags.
    #[serde(default)]
    pub tags_any: Option<Vec<String>>,
    /// Only contexts carrying all of these tags.
    #[serde(default)]
    pub tags_all: Option<Vec<String>>,
    /// Only contexts authored by one of these agents.
    #[serde(default)]
    pub agent_ids: Option<Vec<String>>,
    /// Only contexts created at or after this time (RFC 3339).
    #[serde(default)]
    pub created_after: Option<Timestamp>,
    /// Only contexts created before this time (RFC 3339).
    #[serde(default)]
    pub created_before: Option<Timestamp>,
    /// Only contexts with one of these visibilities (still limited to what the caller may see).
    #[serde(default)]
    pub visibility: Option<Vec<Visibility>>,
    /// Only contexts whose metadata has these top-level keys equal to these values (strings, numbers, booleans).
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

/// A validated filter; produced by `ContextFilter::parse`, consumed by the graph and vector stores.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ContextFilter {
    pub session_id: Option<String>,
    pub types: Vec<String>,
    pub tags_any: Vec<String>,
    pub tags_all: Vec<String>,
    pub agent_ids: Vec<String>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub visibility: Vec<Visibility>,
    pub metadata: BTreeMap<String, Value>,
    /// Scope from the caller: what it may see. Always set by the service, never by the user.
    pub scope: ReadScope,
    /// Hide contexts expired at this time.
    pub now: Timestamp,
}

/// What a caller may read: derived from its principal, enforced by every read path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct ReadScope {
    /// The caller's agent id: sees its own private contexts.
    pub agent_id: String,
    /// Admins see everything, including admin_only contexts.
    pub admin: bool,
    /// The sessions the caller is limited to; `None` means every session.
    pub sessions: Option<Vec<String>>,
}

impl ReadScope {
    pub fn may_see_session(&self, session_id: &str) -> bool {
        self.sessions.as_ref().is_none_or(|s| s.iter().any(|id| id == session_id))
    }

    pub fn may_see(&self, context: &Context) -> bool {
        self.may_see_session(&context.session_id) && self.may_see_visibility(context.visibility, &context.agent_id)
    }

    /// Whether an item with this visibility by this author is visible, sessions aside.
    pub fn may_see_visibility(&self, visibility: Visibility, author: &str) -> bool {
        match visibility {
            Visibility::Public => true,
            Visibility::Private => self.admin || author == self.agent_id,
            Visibility::AdminOnly => self.admin,
        }
    }

    /// Whether a previous version of a visible context is visible: each version by its own visibility
    /// (a draft kept private and later made public stays private).
    pub fn may_see_version(&self, context: &Context, version: &ContextVersion) -> bool {
        self.may_see(context) && self.may_see_visibility(version.visibility, &context.agent_id)
    }
}

fn bounded_list<T>(field: &str, values: Option<Vec<T>>) -> ServiceResult<Vec<T>> {
    let values = values.unwrap_or_default();
    if values.len() > limits::MAX_FILTER_VALUES {
        return Err(ServiceError::invalid(format!("{field} takes at most {} values", limits::MAX_FILTER_VALUES)));
    }
    Ok(values)
}

impl ContextFilter {
    pub fn parse(args: ContextFilterArgs, scope: ReadScope, now: Timestamp) -> ServiceResult<Self> {
        let session_id = args.session_id.map(|id| parse_identifier("session_id", &id)).transpose()?;
        let types = bounded_list("types", args.types)?
            .iter()
            .map(|t| parse_type(Some(t)))
            .collect::<ServiceResult<Vec<_>>>()?;
        let tags_any = parse_tags(&bounded_list("tags_any", args.tags_any)?)?;
        let tags_all = parse_tags(&bounded_list("tags_all", args.tags_all)?)?;
        let agent_ids = bounded_list("agent_ids", args.agent_ids)?
            .iter()
            .map(|a| parse_identifier("agent_ids", a))
            .collect::<ServiceResult<Vec<_>>>()?;
        if let (Some(after), Some(before)) = (args.created_after, args.created_before)
            && after >= before
        {
            return Err(ServiceError::invalid("created_after must be earlier than created_before"));
        }
        let visibility = bounded_list("visibility", args.visibility)?;
        let metadata = parse_metadata(args.metadata.as_ref())?;
        if metadata.len() > limits::MAX_METADATA_FILTER_KEYS {
            return Err(ServiceError::invalid(format!(
                "the metadata filter tests {} keys; at most {} are allowed",
                metadata.len(),
                limits::MAX_METADATA_FILTER_KEYS
            )));
        }
        for (key, value) in &metadata {
            if !(value.is_string() || value.is_number() || value.is_boolean()) {
                return Err(ServiceError::invalid(format!(
                    "metadata filter '{key}' must be a string, number or boolean"
                )));
            }
        }
        Ok(ContextFilter {
            session_id,
            types,
            tags_any,
            tags_all,
            agent_ids,
            created_after: args.created_after,
            created_before: args.created_before,
            visibility,
            metadata: metadata.into_iter().collect(),
            scope,
            now,
        })
    }

    /// The same conditions evaluated in memory: the oracle the stores' filters are tested against.
    pub fn matches(&self, context: &Context) -> bool {
        let metadata_ok = self.metadata.iter().all(|(key, value)| context.metadata.get(key) == Some(value));
        self.scope.may_see(context)
            && !context.is_expired(self.now)
            && self.session_id.as_ref().is_none_or(|s| *s == context.session_id)
            && (self.types.is_empty() || self.types.contains(&context.context_type))
            && (self.tags_any.is_empty() || self.tags_any.iter().any(|t| context.tags.contains(t)))
            && self.tags_all.iter().all(|t| context.tags.contains(t))
            && (self.agent_ids.is_empty() || self.agent_ids.contains(&context.agent_id))
            && self.created_after.is_none_or(|t| context.created_at >= t)
            && self.created_before.is_none_or(|t| context.created_at < t)
            && (self.visibility.is_empty() || self.visibility.contains(&context.visibility))
            && metadata_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_normalised_deduplicated_and_sorted() {
        let tags = parse_tags(&["  Rust ".into(), "rust".into(), "async".into()]).unwrap();
        assert_eq!(tags, vec!["async", "rust"]);
    }

    #[test]
    fn too_many_tags_is_an_invalid_argument() {
        let tags: Vec<String> = (0..=limits::MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert!(matches!(parse_tags(&tags), Err(ServiceError::InvalidArgument(_))));
    }

    #[test]
    fn oversized_content_is_payload_too_large() {
        let content = "x".repeat(limits::MAX_CONTENT_BYTES + 1);
        assert!(matches!(parse_content(&content), Err(ServiceError::PayloadTooLarge(_))));
        assert!(matches!(parse_content("  "), Err(ServiceError::InvalidArgument(_))));
    }

    #[test]
    fn identifiers_reject_spaces_and_empty() {
        assert!(parse_identifier("agent_id", "agent-1").is_ok());
        assert!(parse_identifier("agent_id", "").is_err());
        assert!(parse_identifier("agent_id", "a b").is_err());
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        let t = Timestamp(1_764_000_000_123);
        assert_eq!(Timestamp::parse(&t.to_rfc3339()).unwrap(), t);
    }

    #[test]
    fn private_contexts_are_visible_to_author_and_admin_only() {
        let context = Context {
            id: Uuid::now_v7(),
            session_id: "s".into(),
            agent_id: "alice".into(),
            context_type: "note".into(),
            content: "c".into(),
            tags: vec![],
            metadata: Map::new(),
            visibility: Visibility::Private,
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
            version: 1,
            expires_at: None,
            content_hash: content_hash("c"),
        };
        let alice = ReadScope { agent_id: "alice".into(), admin: false, sessions: None };
        let bob = ReadScope { agent_id: "bob".into(), admin: false, sessions: None };
        let admin = ReadScope { agent_id: "root".into(), admin: true, sessions: None };
        assert!(alice.may_see(&context));
        assert!(!bob.may_see(&context));
        assert!(admin.may_see(&context));
    }
}
