//! MCP over stdio and Streamable HTTP (rmcp). One handler serves both: `tools/list` from the shared tool
//! catalogue, `tools/call` through the shared dispatcher, failures as `isError` results carrying
//! `{"error": {"code", "message"}}`, with resource links to the contexts a result names; resources, prompts
//! and completions (`primitives`) read through the same dispatcher.
//!
//! The handler is written against `ServerHandler` directly rather than with `#[tool_router]`, because the
//! same catalogue also drives the HTTP tool endpoint and the OpenAPI document.

pub(crate) mod primitives;

use std::sync::Arc;
use std::time::Instant;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult, ContentBlock,
    GetPromptRequestParams, GetPromptResponse, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig, SubscribeRequestParams, SubscriptionFilter,
    Tool, ToolAnnotations, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::service::SubscriptionContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::Value;

use crate::auth::{Authenticator, Principal};
use crate::service::ContextService;
use crate::tools::{self, ToolSpec};

const INSTRUCTIONS: &str = "Shared, durable memory for agents. Create or pick a session, store contexts \
(text + tags + metadata) with store_context, find them with search_context (semantic + fuzzy), relate them \
with link_contexts, and keep per-agent JSON state with set_agent_state (recall it by meaning with \
recall_agent_state). Ids are arguments; nothing depends \
on the MCP session.";

/// The MCP server: cheap to clone, one per MCP session (rmcp's factory clones it).
#[derive(Clone)]
pub struct McpServer {
    service: Arc<ContextService>,
    auth: Arc<Authenticator>,
    /// The caller when the transport carries no identity of its own (stdio; HTTP before authentication).
    default_principal: Principal,
    tools: Arc<Vec<Tool>>,
    /// This connection's `resources/subscribe` watches, by URI; they stop with the last clone.
    watches: Arc<Watches>,
}

/// The tasks telling of changes to subscribed resources, stopped when the connection's handler is dropped.
#[derive(Default)]
struct Watches(std::sync::Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>);

impl Watches {
    fn replace(&self, uri: String, task: Option<tokio::task::AbortHandle>) {
        let mut watches = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let old = match task {
            Some(task) => watches.insert(uri, task),
            None => watches.remove(&uri),
        };
        if let Some(old) = old {
            old.abort();
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for task in self.0.get_mut().unwrap_or_else(|e| e.into_inner()).values() {
            task.abort();
        }
    }
}

fn to_mcp_tool(spec: &ToolSpec) -> Tool {
    let annotations = ToolAnnotations::new()
        .read_only(spec.read_only)
        .destructive(spec.destructive)
        .idempotent(spec.idempotent)
        .open_world(false);
    Tool::new_with_raw(spec.name, Some(spec.description.clone()), spec.input_schema.clone())
        .with_raw_output_schema(spec.output_schema.clone())
        .with_annotations(annotations)
}

impl McpServer {
    pub fn new(service: Arc<ContextService>, auth: Arc<Authenticator>, default_principal: Principal) -> Self {
        let tools = tools::catalogue_for(&service).iter().map(to_mcp_tool).collect();
        Self { service, auth, default_principal, tools: Arc::new(tools), watches: Arc::default() }
    }

    /// A handler for a new connection: the same service and catalogue, its own `resources/subscribe` watches
    /// (so one client's unsubscribe never touches another's).
    pub fn for_connection(&self) -> Self {
        Self { watches: Arc::default(), ..self.clone() }
    }

    /// The identity an HTTP edge attached to the request, else the default one.
    fn principal(&self, context: &RequestContext<RoleServer>) -> Principal {
        context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .cloned()
            .unwrap_or_else(|| self.default_principal.clone())
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_prompts()
            .enable_completions()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("context-store", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let principal = self.principal(&context);
        let arguments = request.arguments.map(Value::Object).unwrap_or(Value::Null);
        let result =
            timed_call::<tools::AsValue>(&self.service, &self.auth, &principal, &request.name, arguments).await;
        Ok(tool_call_result(result).into())
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let principal = self.principal(&context);
        primitives::list(&self.service, &self.auth, &principal, request.and_then(|r| r.cursor)).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(primitives::templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let principal = self.principal(&context);
        Ok(primitives::read_resource(&self.service, &self.auth, &principal, &request.uri).await?.into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(primitives::prompts())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let principal = self.principal(&context);
        Ok(primitives::get_prompt(&self.service, &self.auth, &principal, request).await?.into())
    }

    /// `subscriptions/listen` (2026-07-28): the `session://` and `context://` URIs asked for are watched.
    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        let uris = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| primitives::Watch::parse(uri).is_some())
            .take(primitives::MAX_WATCHES);
        Some(SubscriptionFilter::builder().resource_subscriptions(uris.cloned().collect::<Vec<_>>()).build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let principal = self.principal(context.request_context());
        // Notifications name the contexts that changed: a key that may not read gets none.
        principal.require(crate::auth::Permission::Read).map_err(|e| primitives::mcp_error(e.into()))?;
        let watches: Vec<primitives::Watch> = context
            .accepted()
            .resource_subscriptions
            .iter()
            .flatten()
            .filter_map(|u| primitives::Watch::parse(u))
            .collect();
        let subscriber = self.service.changes().subscribe(&principal).map_err(|e| primitives::mcp_error(e.into()))?;
        // Over HTTP the stream outlives the request that authenticated it: its credential is checked again.
        let credential = (!principal.trusted)
            .then(|| context.request_context().extensions.get::<http::request::Parts>())
            .flatten()
            .and_then(|parts| crate::auth::bearer_of(&parts.headers))
            .map(|bearer| crate::auth::CredentialWatch::new(self.auth.clone(), bearer));
        let sink = context.sink().clone();
        let notify = |uri: String| {
            let sink = sink.clone();
            async move { sink.notify_resource_updated(uri).await.is_ok() }
        };
        tokio::select! {
            _ = primitives::follow(subscriber, &principal, credential, &watches, notify) => {}
            _ = context.cancelled() => {}
        }
        Ok(())
    }

    /// `resources/subscribe` (before 2026-07-28): changes are told as `notifications/resources/updated` on
    /// this connection (stdio; on Streamable HTTP use `subscriptions/listen` or `GET /events`) until it closes.
    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let watch = primitives::Watch::parse(&request.uri).ok_or_else(|| {
            McpError::invalid_params(
                format!("only session:// and context:// resources can be watched: {}", request.uri),
                None,
            )
        })?;
        if context.extensions.get::<http::request::Parts>().is_some() {
            return Err(McpError::invalid_request(
                "resources/subscribe needs a connection that stays open (stdio); over HTTP use subscriptions/listen \
                 or GET /events",
                None,
            ));
        }
        let principal = self.principal(&context);
        let subscriber = self.service.changes().subscribe(&principal).map_err(|e| primitives::mcp_error(e.into()))?;
        let peer = context.peer.clone();
        let uri = watch.uri.clone();
        let task = tokio::spawn(async move {
            let notify = |uri: String| {
                let peer = peer.clone();
                async move { peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri)).await.is_ok() }
            };
            primitives::follow(subscriber, &principal, None, &[watch], notify).await;
        });
        self.watches.replace(uri, Some(task.abort_handle()));
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.watches.replace(request.uri, None);
        Ok(())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let principal = self.principal(&context);
        primitives::complete(&self.service, &self.auth, &principal, request).await
    }
}

/// A tool's answer as MCP returns it: the result as structured content (and, as the spec asks, the same
/// JSON as text), with a resource link for each context or session it names; a failure as a structured
/// error result. Shared by the handler and the HTTP fast path for `tools/call`.
pub fn tool_call_result(result: Result<Value, tools::ToolError>) -> CallToolResult {
    match result {
        Ok(value) => {
            let links = primitives::links_in(&value);
            let mut result = CallToolResult::structured(value);
            result.content.extend(links.into_iter().map(ContentBlock::resource_link));
            result
        }
        Err(err) => CallToolResult::structured_error(err.to_json()),
    }
}

/// Calls a tool and records its count (by status) and latency.
pub async fn timed_call<E: tools::Encoding>(
    service: &Arc<ContextService>,
    auth: &Authenticator,
    principal: &Principal,
    name: &str,
    arguments: Value,
) -> Result<E::Output, tools::ToolError>
where
    E::Output: Send + 'static,
{
    let started = Instant::now();
    let result = tools::call::<E>(service, auth, principal, name, arguments).await;
    let metrics = service.metrics();
    // Unknown names share one label so callers cannot grow the label set.
    let label = if result.as_ref().is_err_and(|e| e.message.starts_with("no tool named")) { "unknown" } else { name };
    let status = match &result {
        Ok(_) => "ok",
        Err(err) => err.code.as_str(),
    };
    metrics.tool_requests.with_label_values(&[label, status]).inc();
    metrics.tool_latency.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
    result
}

/// Serves MCP over stdin/stdout until the client disconnects.
pub async fn serve_stdio(
    service: Arc<ContextService>,
    auth: Arc<Authenticator>,
    principal: Principal,
) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let running = McpServer::new(service, auth, principal).serve(rmcp::transport::stdio()).await?;
    running.waiting().await?;
    Ok(())
}
