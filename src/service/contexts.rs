//! Contexts: the write path (store, update, delete) and the graph reads (get, list, link, related).

use uuid::Uuid;

use super::{
    ContextList, ContextService, DeleteContextRequest, DeleteContextResponse, GetContextRequest, GetContextResponse,
    GetRelatedRequest, LinkContextsRequest, LinkContextsResponse, ListContextsRequest, ListOrder, RelatedItem,
    RelatedList, StoreContextRequest, StoreContextResponse, UpdateContextRequest, parse_id_cursor,
};
use crate::auth::{Permission, Principal};
use crate::domain::{
    Context, ContextFilter, ReadScope, Relation, Timestamp, content_hash, limits, parse_content, parse_identifier,
    parse_limit, parse_metadata, parse_tags, parse_ttl, parse_type, parse_uuid,
};
use crate::error::{ServiceError, ServiceResult};
use crate::store::graph::RecallOrder;
use crate::store::{InsertOutcome, VectorPoint};

/// How many nodes a related-contexts traversal explores at most.
const MAX_RELATED_NODES: usize = 1000;

/// How deep a client may page into the recall orders of `list_contexts`.
const MAX_RECALL_OFFSET: usize = 10_000;

impl ContextService {
    pub(super) async fn embed_one(&self, text: &str) -> ServiceResult<Vec<f32>> {
        let mut vectors = self.embedder.embed(vec![text.to_string()]).await?;
        vectors.pop().ok_or_else(|| ServiceError::Internal("embedder returned no vector".into()))
    }

    /// A live context the scope may see; hidden and missing contexts are both `not_found`.
    async fn visible_context(&self, id: Uuid, scope: &ReadScope) -> ServiceResult<Context> {
        match self.graph.get_context(id).await? {
            Some(context) if scope.may_see(&context) && !context.is_expired(Timestamp::now()) => Ok(context),
            _ => Err(ServiceError::NotFound(format!("context {id}"))),
        }
    }

    /// A context the acting agent may change: visible, and authored by it (or the caller is an admin).
    async fn writable_context(&self, principal: &Principal, agent: &str, id: Uuid) -> ServiceResult<Context> {
        let context = self.visible_context(id, &principal.read_scope(agent)).await?;
        if context.agent_id != agent && !principal.permissions.admin {
            return Err(ServiceError::PermissionDenied("only the author or an admin may change a context".into()));
        }
        Ok(context)
    }

    pub async fn store_context(
        &self,
        principal: &Principal,
        request: StoreContextRequest,
    ) -> ServiceResult<StoreContextResponse> {
        principal.require(Permission::Write)?;
        let agent_id = principal.acting_agent(request.agent_id.as_deref())?;
        let now = Timestamp::now();
        let content = parse_content(&request.content)?;
        let context = Context {
            id: Uuid::now_v7(),
            session_id: parse_identifier("session_id", &request.session_id)?,
            agent_id: agent_id.clone(),
            context_type: parse_type(request.context_type.as_deref())?,
            content_hash: content_hash(&content),
            content,
            tags: parse_tags(request.tags.as_deref().unwrap_or_default())?,
            metadata: parse_metadata(request.metadata.as_ref())?,
            visibility: request.visibility.unwrap_or_default(),
            created_at: now,
            updated_at: now,
            version: 1,
            expires_at: parse_ttl(request.ttl_seconds, now)?,
        };
        if !principal.may_use_session(&context.session_id) {
            return Err(ServiceError::NotFound(format!("session '{}'", context.session_id)));
        }
        let scope = principal.read_scope(&agent_id);
        if let Some(existing) = self.graph.find_duplicate(&context.session_id, &context.content_hash, &scope).await? {
            return Ok(StoreContextResponse { context: existing, deduplicated: true });
        }
        let embedding = self.embed_one(&context.content).await?;
        // Held across both stores, so a running journal repair waits for this write instead of racing it.
        let _ordered = self.item_lock(context.id).lock().await;
        let journal_seq = match self.graph.insert_context(&context, &embedding, &scope).await {
            Ok(InsertOutcome::Inserted { journal_seq }) => journal_seq,
            Ok(InsertOutcome::Duplicate(existing)) => {
                return Ok(StoreContextResponse { context: *existing, deduplicated: true });
            }
            Err(crate::error::StoreError::NotFound) => {
                return Err(ServiceError::NotFound(format!("session '{}'", context.session_id)));
            }
            Err(other) => return Err(other.into()),
        };
        let point = VectorPoint { context: context.clone(), vector: embedding };
        if let Err(err) = self.vectors.upsert(vec![point]).await {
            self.graph.rollback_insert(context.id).await?;
            self.settle_after_rollback(context.id, journal_seq).await;
            return Err(err.into());
        }
        self.written(journal_seq);
        self.changes.publish(super::changes::ChangeKind::Stored, &context, None);
        Ok(StoreContextResponse { context, deduplicated: false })
    }

    pub async fn get_context(
        &self,
        principal: &Principal,
        request: GetContextRequest,
    ) -> ServiceResult<GetContextResponse> {
        principal.require(Permission::Read)?;
        let agent = principal.acting_agent(request.agent_id.as_deref())?;
        let id = parse_uuid("id", &request.id)?;
        let versions_limit = match request.versions_limit {
            None => limits::DEFAULT_VERSIONS,
            Some(n) if (1..=limits::MAX_VERSIONS).contains(&n) => n,
            Some(_) => {
                return Err(ServiceError::invalid(format!(
                    "versions_limit must be between 1 and {}",
                    limits::MAX_VERSIONS
                )));
            }
        };
        let scope = principal.read_scope(&agent);
        let context = self.visible_context(id, &scope).await?;
        self.recalls.note([id]);
        let (mut versions, mut versions_next) = (Vec::new(), None);
        if request.include_versions {
            // One more than the page, to know whether another follows.
            let mut page = self.graph.context_versions(id, request.versions_before, Some(versions_limit + 1)).await?;
            if page.len() > versions_limit {
                page.truncate(versions_limit);
                versions_next = page.last().map(|version| version.version);
            }
            versions = page.into_iter().filter(|version| scope.may_see_version(&context, version)).collect();
        }
        Ok(GetContextResponse { context, versions, versions_next })
    }

    pub async fn update_context(&self, principal: &Principal, request: UpdateContextRequest) -> ServiceResult<Context> {
        principal.require(Permission::Write)?;
        let agent = principal.acting_agent(request.agent_id.as_deref())?;
        let id = parse_uuid("id", &request.id)?;
        let now = Timestamp::now();
        // Validate everything before touching any store.
        let content = request.content.as_deref().map(parse_content).transpose()?;
        let context_type = request.context_type.as_deref().map(|t| parse_type(Some(t))).transpose()?;
        let tags = request.tags.as_deref().map(parse_tags).transpose()?;
        let metadata = request.metadata.as_ref().map(|m| parse_metadata(Some(m))).transpose()?;
        let expires_at = parse_ttl(request.ttl_seconds, now)?;

        let _ordered = self.item_lock(id).lock().await;
        let current = self.writable_context(principal, &agent, id).await?;
        if let Some(expected) = request.expected_version
            && expected != current.version
        {
            return Err(ServiceError::Conflict(format!(
                "expected_version {expected} does not match the current version {}",
                current.version
            )));
        }
        let mut updated = current.clone();
        updated.version = current.version + 1;
        updated.updated_at = now;
        if let Some(content) = content {
            updated.content_hash = content_hash(&content);
            updated.content = content;
        }
        if let Some(context_type) = context_type {
            updated.context_type = context_type;
        }
        if let Some(tags) = tags {
            updated.tags = tags;
        }
        if let Some(metadata) = metadata {
            updated.metadata = metadata;
        }
        if let Some(visibility) = request.visibility {
            updated.visibility = visibility;
        }
        if expires_at.is_some() {
            updated.expires_at = expires_at;
        }
        let embedding = if updated.content_hash != current.content_hash {
            self.embed_one(&updated.content).await?
        } else {
            let mut entries = self.graph.index_entries(&[id]).await?;
            entries.pop().map(|e| e.embedding).ok_or_else(|| ServiceError::NotFound(format!("context {id}")))?
        };
        let (journal_seq, previous, previous_embedding) = self.graph.update_context(&updated, &embedding).await?;
        let point = VectorPoint { context: updated.clone(), vector: embedding };
        if let Err(err) = self.vectors.upsert(vec![point]).await {
            self.graph.rollback_update(&previous, &previous_embedding).await?;
            self.settle_after_rollback(id, journal_seq).await;
            return Err(err.into());
        }
        self.written(journal_seq);
        self.changes.publish(super::changes::ChangeKind::Updated, &updated, None);
        Ok(updated)
    }

    pub async fn delete_context(
        &self,
        principal: &Principal,
        request: DeleteContextRequest,
    ) -> ServiceResult<DeleteContextResponse> {
        principal.require(Permission::Write)?;
        let agent = principal.acting_agent(request.agent_id.as_deref())?;
        let id = parse_uuid("id", &request.id)?;
        let _ordered = self.item_lock(id).lock().await;
        self.writable_context(principal, &agent, id).await?;
        self.remove_context(id, request.expected_version).await?;
        Ok(DeleteContextResponse { id: id.to_string(), deleted: true })
    }

    /// Deletes a context from both stores (the caller holds its item lock): graph tombstone and journal
    /// entry, then the vector delete (undone in the graph if it fails), then the purge.
    pub(super) async fn remove_context(&self, id: Uuid, expected_version: Option<i64>) -> ServiceResult<()> {
        let (journal_seq, deleted) = self.graph.delete_context(id, expected_version).await?;
        if let Err(err) = self.vectors.delete(&[id]).await {
            self.graph.rollback_delete(id).await?;
            self.settle_after_rollback(id, journal_seq).await;
            return Err(err.into());
        }
        // The delete has taken effect: every read skips the tombstone. A purge that fails leaves the journal
        // entry pending, and the repair purges it.
        match self.graph.purge_context(id).await {
            Ok(()) => self.written(journal_seq),
            Err(err) => tracing::warn!(%id, error = %err, "purge of a deleted context left for the journal repair"),
        }
        self.changes.publish(super::changes::ChangeKind::Deleted, &deleted, None);
        Ok(())
    }

    pub async fn list_contexts(
        &self,
        principal: &Principal,
        request: ListContextsRequest,
    ) -> ServiceResult<ContextList> {
        principal.require(Permission::Read)?;
        let agent = principal.acting_agent(request.agent_id.as_deref())?;
        let filter = ContextFilter::parse(request.filter, principal.read_scope(&agent), Timestamp::now())?;
        let limit = parse_limit(request.limit)?;
        let order = match request.sort {
            ListOrder::Newest => None,
            ListOrder::MostRecalled => Some(RecallOrder::Count),
            ListOrder::LastRecalled => Some(RecallOrder::LastRecalled),
        };
        let Some(order) = order else {
            let after = parse_id_cursor(request.cursor.as_deref())?;
            let mut contexts = self.graph.list_contexts(&filter, after, limit + 1).await?;
            let next_cursor = if contexts.len() > limit {
                contexts.truncate(limit);
                contexts.last().map(|c| c.id.to_string())
            } else {
                None
            };
            return Ok(ContextList { contexts, next_cursor, recall: Default::default() });
        };
        // Statistics change while a client pages, so these orders page by position (`r:<offset>`).
        let offset = match request.cursor.as_deref() {
            None => 0,
            Some(cursor) => cursor
                .strip_prefix("r:")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n <= MAX_RECALL_OFFSET)
                .ok_or_else(|| ServiceError::invalid("cursor is not one this service issued for this order"))?,
        };
        let mut rows = self.graph.list_recalled(&filter, order, offset, limit + 1).await?;
        let next_cursor =
            (rows.len() > limit && offset + limit <= MAX_RECALL_OFFSET).then(|| format!("r:{}", offset + limit));
        rows.truncate(limit);
        let recall = rows.iter().map(|(context, stats)| (context.id.to_string(), *stats)).collect();
        Ok(ContextList { contexts: rows.into_iter().map(|(context, _)| context).collect(), next_cursor, recall })
    }

    pub async fn link_contexts(
        &self,
        principal: &Principal,
        request: LinkContextsRequest,
    ) -> ServiceResult<LinkContextsResponse> {
        principal.require(Permission::Write)?;
        let agent = principal.acting_agent(request.agent_id.as_deref())?;
        let scope = principal.read_scope(&agent);
        let from_id = parse_uuid("from_id", &request.from_id)?;
        let to_id = parse_uuid("to_id", &request.to_id)?;
        let relation = parse_identifier("relation", &request.relation)?;
        let metadata = parse_metadata(request.metadata.as_ref())?;
        // A link is part of its source: only the source's author (or an admin) adds one; the target only
        // has to be visible. The link records who made it.
        let source = self.writable_context(principal, &agent, from_id).await?;
        let target = self.visible_context(to_id, &scope).await?;
        let edge = Relation {
            from_id,
            to_id,
            relation: relation.clone(),
            metadata,
            created_at: Timestamp::now(),
            created_by: agent.clone(),
        };
        self.graph.link(&edge).await.map_err(|err| match err {
            crate::error::StoreError::NotFound => ServiceError::NotFound("context".into()),
            other => other.into(),
        })?;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let link = super::changes::LinkChange {
            to_id,
            relation: relation.clone(),
            to_session_id: target.session_id,
            to_agent_id: target.agent_id,
            to_visibility: target.visibility,
        };
        self.changes.publish(super::changes::ChangeKind::Linked, &source, Some(link));
        Ok(LinkContextsResponse { from_id: from_id.to_string(), to_id: to_id.to_string(), relation })
    }

    pub async fn get_related(&self, principal: &Principal, request: GetRelatedRequest) -> ServiceResult<RelatedList> {
        principal.require(Permission::Read)?;
        let agent = principal.acting_agent(request.agent_id.as_deref())?;
        let scope = principal.read_scope(&agent);
        let id = parse_uuid("id", &request.id)?;
        let depth = request.depth.unwrap_or(1);
        if !(1..=limits::MAX_RELATED_DEPTH).contains(&depth) {
            return Err(ServiceError::invalid(format!("depth must be between 1 and {}", limits::MAX_RELATED_DEPTH)));
        }
        let relation = request.relation.as_deref().map(|r| parse_identifier("relation", r)).transpose()?;
        let limit = parse_limit(request.limit)?;
        let offset: usize = match request.cursor.as_deref() {
            None => 0,
            Some(c) => c.parse().map_err(|_| ServiceError::invalid("cursor is not one this service issued"))?,
        };
        self.visible_context(id, &scope).await?;
        let now = Timestamp::now();
        let visible: Vec<RelatedItem> = self
            .graph
            .related(id, depth, relation.as_deref(), request.both_directions, MAX_RELATED_NODES, &scope)
            .await?
            .into_iter()
            .filter(|r| scope.may_see(&r.context) && !r.context.is_expired(now))
            .map(|r| RelatedItem { context: r.context, depth: r.depth, relation: r.relation, via: r.via.to_string() })
            .collect();
        let total = visible.len();
        let related: Vec<RelatedItem> = visible.into_iter().skip(offset).take(limit).collect();
        let next_cursor = (offset + related.len() < total).then(|| (offset + related.len()).to_string());
        Ok(RelatedList { related, next_cursor })
    }
}
