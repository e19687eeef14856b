//! The MCP primitives beside tools: resources (contexts, sessions and agent state, by URI), prompts an
//! agent host can offer its user, and argument completion. Every read goes through the same tool
//! dispatcher as `tools/call`, so identity, permissions and scope are exactly the tools'.
//!
//! URIs: `context://{id}`, `session://{session_id}` (the session and its newest contexts) and
//! `state://{agent_id}/{key}` (`?session_id=...` for a key kept per session; the key is percent-encoded).

use std::sync::Arc;

use rmcp::ErrorData as McpError;
use rmcp::model::{
    CompleteRequestParams, CompleteResult, CompletionInfo, GetPromptRequestParams, GetPromptResult, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, Prompt, PromptArgument, PromptMessage, ReadResourceResult,
    Reference, Resource, ResourceContents, ResourceTemplate, Role,
};
use serde_json::{Value, json};

use crate::auth::{Authenticator, Principal};
use crate::error::ErrorCode;
use crate::service::ContextService;
use crate::tools::{self, AsValue, ToolError};

/// Items per `resources/list` page.
const PAGE: usize = 50;
/// Contexts shown with a session, and given to the resume prompt by default.
const RECENT: usize = 20;

/// Calls a read tool as `principal` (the same checks as `tools/call`).
async fn read(
    service: &Arc<ContextService>,
    auth: &Authenticator,
    principal: &Principal,
    tool: &str,
    arguments: Value,
) -> Result<Value, ToolError> {
    tools::call::<AsValue>(service, auth, principal, tool, arguments).await
}

/// A tool error as an MCP error: the stable code and message travel in `data`.
pub fn mcp_error(err: ToolError) -> McpError {
    let data = Some(err.to_json());
    match err.code {
        ErrorCode::NotFound => McpError::resource_not_found(err.message, data),
        ErrorCode::InvalidArgument => McpError::invalid_params(err.message, data),
        _ => McpError::internal_error(err.message, data),
    }
}

fn invalid(message: impl Into<String>) -> McpError {
    McpError::invalid_params(message.into(), None)
}

fn context_resource(context: &Value) -> Option<Resource> {
    ContextLink::from_value(context).map(|link| link.resource())
}

/// The resource link of one context, borrowed from a tool result: its URI, the start of its text as the
/// title, and where it lives. `resource` builds rmcp's type; serializing writes the same `resource_link`
/// content block without building it (the direct `tools/call` path).
#[derive(Clone, Copy, Debug)]
pub struct ContextLink<'a> {
    id: LinkId<'a>,
    content: Option<&'a str>,
    kind: Option<&'a str>,
    session_id: Option<&'a str>,
    agent_id: Option<&'a str>,
}

/// A context's id as a result holds it: JSON text, or the typed id.
#[derive(Clone, Copy, Debug)]
enum LinkId<'a> {
    Text(&'a str),
    Typed(&'a uuid::Uuid),
}

impl std::fmt::Display for LinkId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkId::Text(id) => f.write_str(id),
            LinkId::Typed(id) => id.fmt(f),
        }
    }
}

/// Title length of a context link, in characters.
const TITLE_CHARS: usize = 80;

impl<'a> ContextLink<'a> {
    fn from_value(context: &'a Value) -> Option<Self> {
        let text = |key: &str| context[key].as_str();
        Some(Self {
            id: LinkId::Text(text("id")?),
            content: text("content"),
            kind: text("type"),
            session_id: text("session_id"),
            agent_id: text("agent_id"),
        })
    }

    fn from_context(context: &'a crate::domain::Context) -> Self {
        Self {
            id: LinkId::Typed(&context.id),
            content: Some(&context.content),
            kind: Some(&context.context_type),
            session_id: Some(&context.session_id),
            agent_id: Some(&context.agent_id),
        }
    }

    fn title(&self) -> &'a str {
        let content = self.content.unwrap_or_default();
        content.char_indices().nth(TITLE_CHARS).map_or(content, |(end, _)| &content[..end])
    }

    fn description(self) -> impl std::fmt::Display + serde::Serialize + 'a {
        let kind = self.kind.unwrap_or("context");
        let (session, agent) = (self.session_id.unwrap_or("?"), self.agent_id.unwrap_or("?"));
        Shown(move |f: &mut std::fmt::Formatter<'_>| write!(f, "{kind} in session {session} by {agent}"))
    }

    fn uri(self) -> impl std::fmt::Display + serde::Serialize + 'a {
        Shown(move |f: &mut std::fmt::Formatter<'_>| write!(f, "context://{}", self.id))
    }

    fn name(self) -> impl std::fmt::Display + serde::Serialize + 'a {
        Shown(move |f: &mut std::fmt::Formatter<'_>| write!(f, "context {}", self.id))
    }

    pub fn resource(&self) -> Resource {
        Resource::new(self.uri().to_string(), self.name().to_string())
            .with_title(self.title())
            .with_description(self.description().to_string())
            .with_mime_type("application/json")
    }
}

/// Text written by a closure: formatted straight into its destination (a JSON string, a `String`).
struct Shown<F>(F);

impl<F: Fn(&mut std::fmt::Formatter<'_>) -> std::fmt::Result> std::fmt::Display for Shown<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (self.0)(f)
    }
}

impl<F: Fn(&mut std::fmt::Formatter<'_>) -> std::fmt::Result> serde::Serialize for Shown<F> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl serde::Serialize for ContextLink<'_> {
    /// As `ContentBlock::resource_link(self.resource())` serializes.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("type", "resource_link")?;
        map.serialize_entry("uri", &self.uri())?;
        map.serialize_entry("name", &self.name())?;
        map.serialize_entry("title", self.title())?;
        map.serialize_entry("description", &self.description())?;
        map.serialize_entry("mimeType", "application/json")?;
        map.end()
    }
}

fn session_resource(session: &Value) -> Option<Resource> {
    let id = session["id"].as_str()?;
    Some(
        Resource::new(format!("session://{id}"), format!("session {id}"))
            .with_description(session["purpose"].as_str().unwrap_or_default().to_string())
            .with_mime_type("application/json"),
    )
}

/// The contexts a tool result names (`context`, `contexts`, `hits[].context`, `related`), as links.
fn context_links(result: &Value) -> Vec<ContextLink<'_>> {
    let mut found: Vec<&Value> = Vec::new();
    if result["context"].is_object() {
        found.push(&result["context"]);
    }
    if result["id"].is_string() && result["session_id"].is_string() {
        found.push(result);
    }
    for list in ["contexts", "related"] {
        if let Some(items) = result[list].as_array() {
            found.extend(items.iter().map(|item| if item["context"].is_object() { &item["context"] } else { item }));
        }
    }
    if let Some(hits) = result["hits"].as_array() {
        found.extend(hits.iter().map(|hit| &hit["context"]));
    }
    found.into_iter().filter_map(ContextLink::from_value).collect()
}

/// Resource links for the contexts a tool result names.
pub fn links_in(result: &Value) -> Vec<Resource> {
    context_links(result).iter().map(ContextLink::resource).collect()
}

/// The links of typed contexts, each written as a content block after a comma.
pub fn links_json(contexts: &[&crate::domain::Context]) -> Vec<u8> {
    let mut out = Vec::with_capacity(contexts.len() * 256);
    for context in contexts {
        out.push(b',');
        serde_json::to_writer(&mut out, &ContextLink::from_context(context)).expect("a link serializes to memory");
    }
    out
}

pub fn templates() -> ListResourceTemplatesResult {
    ListResourceTemplatesResult::with_all_items(vec![
        ResourceTemplate::new("context://{id}", "context")
            .with_description("A context by id, as get_context returns it (JSON).")
            .with_mime_type("application/json"),
        ResourceTemplate::new("session://{session_id}", "session")
            .with_description("A session and its newest contexts (JSON).")
            .with_mime_type("application/json"),
        ResourceTemplate::new("state://{agent_id}/{key}", "agent state")
            .with_description(
                "A key of an agent's state (your own; admins any agent's). Add ?session_id=... for a key kept per \
                 session; percent-encode the key.",
            )
            .with_mime_type("application/json"),
    ])
}

/// `resources/list`: the sessions the caller may see, then the contexts it may see (newest first), a page
/// at a time. The cursor says which list and where in it (`s:<cursor>` or `c:<cursor>`).
pub async fn list(
    service: &Arc<ContextService>,
    auth: &Authenticator,
    principal: &Principal,
    cursor: Option<String>,
) -> Result<ListResourcesResult, McpError> {
    let (kind, inner) = match cursor.as_deref() {
        None => ("s", None),
        Some(text) => match text.split_once(':') {
            Some(("s", rest)) => ("s", Some(rest.to_string())),
            Some(("c", rest)) => ("c", (!rest.is_empty()).then(|| rest.to_string())),
            _ => return Err(invalid("unknown resources/list cursor")),
        },
    };
    let mut result = ListResourcesResult::default();
    if kind == "s" {
        let page = read(service, auth, principal, "list_sessions", json!({"limit": PAGE, "cursor": inner}))
            .await
            .map_err(mcp_error)?;
        result.resources = page["sessions"].as_array().into_iter().flatten().filter_map(session_resource).collect();
        result.next_cursor = Some(match page["next_cursor"].as_str() {
            Some(next) => format!("s:{next}"),
            None => "c:".to_string(),
        });
        return Ok(result);
    }
    let page = read(service, auth, principal, "list_contexts", json!({"limit": PAGE, "cursor": inner}))
        .await
        .map_err(mcp_error)?;
    result.resources = page["contexts"].as_array().into_iter().flatten().filter_map(context_resource).collect();
    result.next_cursor = page["next_cursor"].as_str().map(|next| format!("c:{next}"));
    Ok(result)
}

/// Splits `scheme://rest` and decodes `rest`'s path and `?session_id=`.
fn parse_uri(uri: &str) -> Result<(&str, Vec<String>, Option<String>), McpError> {
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| invalid(format!("not a resource URI: {uri}")))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| invalid(format!("not UTF-8 after percent-decoding: {uri}")))
    };
    let parts = path.splitn(2, '/').map(decode).collect::<Result<Vec<_>, _>>()?;
    let mut session = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("session_id", value)) => session = Some(decode(value)?),
            _ => return Err(invalid(format!("unknown query parameter in {uri}"))),
        }
    }
    Ok((scheme, parts, session))
}

/// What a subscription to a resource URI watches: a session, or one context (its changes and links).
#[derive(Debug, Clone)]
pub struct Watch {
    pub uri: String,
    session: Option<String>,
    context: Option<uuid::Uuid>,
}

impl Watch {
    /// `session://{id}` or `context://{id}`; other URIs cannot be watched.
    pub fn parse(uri: &str) -> Option<Self> {
        let (scheme, parts, _) = parse_uri(uri).ok()?;
        match (scheme, parts.as_slice()) {
            ("session", [id]) => Some(Self { uri: uri.to_string(), session: Some(id.clone()), context: None }),
            ("context", [id]) => {
                Some(Self { uri: uri.to_string(), session: None, context: Some(uuid::Uuid::parse_str(id).ok()?) })
            }
            _ => None,
        }
    }

    pub fn selects(&self, event: &crate::service::changes::ChangeEvent) -> bool {
        event.concerns(self.session.as_deref(), self.context)
    }
}

/// Resource URIs one subscription may watch.
pub const MAX_WATCHES: usize = 100;

/// Tells of changes to the watched resources, as `notify` (one call per URI a change concerns; every URI
/// after a gap), until the feed ends or `notify` fails (the client is gone).
pub async fn follow<F, Fut>(
    subscriber: crate::service::changes::Subscriber,
    principal: &Principal,
    mut credential: Option<crate::auth::CredentialWatch>,
    watches: &[Watch],
    notify: F,
) where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    use crate::service::changes::Received;
    let mut scope = principal.read_scope(&principal.agent_id);
    let mut subscriber = subscriber;
    let wanted = |event: &crate::service::changes::ChangeEvent| watches.iter().any(|w| w.selects(event));
    while let Some(received) = subscriber.next_checked(&mut scope, &mut credential, wanted).await {
        let uris: Vec<&Watch> = match &received {
            Received::Event(event) => watches.iter().filter(|w| w.selects(event)).collect(),
            // Events were dropped: every watched resource may have changed.
            Received::Missed(_) => watches.iter().collect(),
        };
        for watch in uris {
            if !notify(watch.uri.clone()).await {
                return;
            }
        }
    }
}

/// `resources/read`.
pub async fn read_resource(
    service: &Arc<ContextService>,
    auth: &Authenticator,
    principal: &Principal,
    uri: &str,
) -> Result<ReadResourceResult, McpError> {
    let (scheme, parts, session) = parse_uri(uri)?;
    let body = match (scheme, parts.as_slice()) {
        ("context", [id]) => {
            read(service, auth, principal, "get_context", json!({"id": id})).await.map_err(mcp_error)?["context"]
                .clone()
        }
        ("session", [id]) => {
            let session =
                read(service, auth, principal, "get_session", json!({"session_id": id})).await.map_err(mcp_error)?;
            let recent = read(service, auth, principal, "list_contexts", json!({"session_id": id, "limit": RECENT}))
                .await
                .map_err(mcp_error)?;
            json!({"session": session, "recent_contexts": recent["contexts"]})
        }
        ("state", [agent, key]) => {
            let arguments = json!({"agent_id": agent, "key": key, "session_id": session});
            read(service, auth, principal, "get_agent_state", arguments).await.map_err(mcp_error)?["state"].clone()
        }
        _ => return Err(McpError::resource_not_found(format!("no resource at {uri}"), None)),
    };
    let text = serde_json::to_string_pretty(&body).unwrap_or_default();
    Ok(ReadResourceResult::new(vec![ResourceContents::text(text, uri).with_mime_type("application/json")]))
}

pub fn prompts() -> ListPromptsResult {
    ListPromptsResult::with_all_items(vec![
        Prompt::new(
            "resume_session",
            Some("Pick up the work of a session: its purpose and its newest contexts, to continue from."),
            Some(vec![
                PromptArgument::new("session_id").with_description("The session to resume.").with_required(true),
                PromptArgument::new("limit")
                    .with_description("How many of the newest contexts to include (default 20, at most 100)."),
            ]),
        ),
        Prompt::new(
            "hand_over_task",
            Some("Hand a task over to another agent: what to do, with the session's newest contexts as background."),
            Some(vec![
                PromptArgument::new("session_id")
                    .with_description("The session the task belongs to.")
                    .with_required(true),
                PromptArgument::new("to_agent").with_description("The agent taking the task over.").with_required(true),
                PromptArgument::new("task").with_description("What is to be done.").with_required(true),
            ]),
        ),
    ])
}

fn argument<'a>(request: &'a GetPromptRequestParams, name: &str) -> Option<&'a str> {
    request.arguments.as_ref()?.get(name)?.as_str().map(str::trim).filter(|v| !v.is_empty())
}

fn context_lines(contexts: &Value) -> String {
    let lines: Vec<String> = contexts
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "- [{}] ({}, by {}, context://{}): {}",
                c["created_at"].as_str().unwrap_or("?"),
                c["type"].as_str().unwrap_or("context"),
                c["agent_id"].as_str().unwrap_or("?"),
                c["id"].as_str().unwrap_or("?"),
                c["content"].as_str().unwrap_or_default()
            )
        })
        .collect();
    if lines.is_empty() { "(no contexts yet)".to_string() } else { lines.join("\n") }
}

/// `prompts/get`.
pub async fn get_prompt(
    service: &Arc<ContextService>,
    auth: &Authenticator,
    principal: &Principal,
    request: GetPromptRequestParams,
) -> Result<GetPromptResult, McpError> {
    let session_id = argument(&request, "session_id").ok_or_else(|| invalid("session_id is required"))?;
    let limit = match argument(&request, "limit") {
        None => RECENT,
        Some(text) => {
            text.parse::<usize>().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| invalid("limit is 1 to 100"))?
        }
    };
    let session =
        read(service, auth, principal, "get_session", json!({"session_id": session_id})).await.map_err(mcp_error)?;
    let recent = read(service, auth, principal, "list_contexts", json!({"session_id": session_id, "limit": limit}))
        .await
        .map_err(mcp_error)?;
    let purpose = session["purpose"].as_str().unwrap_or_default();
    let background = context_lines(&recent["contexts"]);
    let (description, text) = match request.name.as_str() {
        "resume_session" => (
            format!("Resume session {session_id}"),
            format!(
                "Resume the work of session `{session_id}` (purpose: {purpose}). Its {limit} newest contexts, newest \
                 first:\n\n{background}\n\nSummarise where the work stands, then continue it. Store what you decide \
                 or learn with store_context in session `{session_id}`."
            ),
        ),
        "hand_over_task" => {
            let to = argument(&request, "to_agent").ok_or_else(|| invalid("to_agent is required"))?;
            let task = argument(&request, "task").ok_or_else(|| invalid("task is required"))?;
            (
                format!("Hand a task in session {session_id} over to {to}"),
                format!(
                    "Agent `{to}` takes over this task in session `{session_id}` (purpose: {purpose}):\n\n{task}\n\n\
                     Background, the session's newest contexts:\n\n{background}\n\nRecord progress with \
                     store_context in session `{session_id}` so the next agent can pick it up."
                ),
            )
        }
        other => return Err(invalid(format!("no prompt named '{other}'"))),
    };
    let mut result = GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)]);
    result.description = Some(description);
    Ok(result)
}

/// Distinct values of `field` among the contexts the caller may see (the newest 200, in a session if
/// given), starting with `prefix`.
async fn context_values(
    service: &Arc<ContextService>,
    auth: &Authenticator,
    principal: &Principal,
    session: Option<&str>,
    field: &str,
    prefix: &str,
) -> Vec<String> {
    let arguments = json!({"session_id": session, "limit": 200});
    let Ok(page) = read(service, auth, principal, "list_contexts", arguments).await else { return Vec::new() };
    let mut values: Vec<String> = page["contexts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| match &c[field] {
            Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            Value::String(one) => vec![one.clone()],
            _ => Vec::new(),
        })
        .filter(|v| v.starts_with(prefix))
        .collect();
    values.sort();
    values.dedup();
    values
}

/// `completion/complete` for prompt arguments and resource template variables: session ids, agent ids,
/// tags, context types and state keys, each from what the caller may see.
pub async fn complete(
    service: &Arc<ContextService>,
    auth: &Authenticator,
    principal: &Principal,
    request: CompleteRequestParams,
) -> Result<CompleteResult, McpError> {
    let prefix = request.argument.value.as_str();
    let known = |name: &str| request.context.as_ref().and_then(|c| c.arguments.as_ref()?.get(name).cloned());
    let session = known("session_id");
    let values = match (&request.r#ref, request.argument.name.as_str()) {
        (_, "session_id") => {
            let page =
                read(service, auth, principal, "list_sessions", json!({"limit": 200})).await.map_err(mcp_error)?;
            page["sessions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["id"].as_str())
                .filter(|id| id.starts_with(prefix))
                .map(str::to_string)
                .collect()
        }
        (Reference::Resource(_), "agent_id") => {
            vec![principal.agent_id.clone()].into_iter().filter(|id| id.starts_with(prefix)).collect()
        }
        (Reference::Resource(_), "key") => {
            let agent = known("agent_id");
            let arguments = json!({"prefix": prefix, "agent_id": agent, "limit": 100});
            let page = read(service, auth, principal, "list_agent_state", arguments).await.map_err(mcp_error)?;
            page["states"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["key"].as_str())
                .map(str::to_string)
                .collect()
        }
        (_, "agent_id" | "to_agent") => {
            context_values(service, auth, principal, session.as_deref(), "agent_id", prefix).await
        }
        (_, "tag" | "tags") => context_values(service, auth, principal, session.as_deref(), "tags", prefix).await,
        (_, "type" | "context_type") => {
            context_values(service, auth, principal, session.as_deref(), "type", prefix).await
        }
        _ => Vec::new(),
    };
    let total = values.len();
    let mut shown = values;
    shown.truncate(CompletionInfo::MAX_VALUES);
    let mut info = CompletionInfo::new(shown).map_err(|e| McpError::internal_error(e, None))?;
    info.total = Some(total as u32);
    info.has_more = Some(total > CompletionInfo::MAX_VALUES);
    Ok(CompleteResult::new(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_serializes_as_rmcp_serializes_its_resource_link() {
        let long: String = "é\"x\\".repeat(40);
        let contexts = [
            json!({"id": "c1", "session_id": "s", "agent_id": "a", "type": "note", "content": long}),
            json!({"id": "c2", "content": "short \u{1} text"}),
            json!({"id": "c3"}),
        ];
        for context in &contexts {
            let link = ContextLink::from_value(context).unwrap();
            let direct = serde_json::to_value(link).unwrap();
            let through_rmcp = serde_json::to_value(rmcp::model::ContentBlock::resource_link(link.resource())).unwrap();
            assert_eq!(direct, through_rmcp, "{context}");
        }
        let title = ContextLink::from_value(&contexts[0]).unwrap().resource().title.unwrap();
        assert_eq!(title.chars().count(), TITLE_CHARS);
    }
}
