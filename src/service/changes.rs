//! The change feed: every store, update, delete and link of a context, in the order this process applied
//! them, to subscribers (`GET /events` as server-sent events, MCP `subscriptions/listen`). Events go into one
//! bounded ring (tokio `broadcast`): publishing never waits for a subscriber and memory stays bounded; a
//! subscriber that falls more than the ring's size behind is told how many events it missed and goes on
//! from the oldest one kept. Each subscriber sees only events about contexts its read scope may see.
//!
//! The feed is per process: with several replicas, a subscriber hears of the writes made through the
//! replica it is connected to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::auth::Principal;
use crate::domain::{Context, ReadScope, Timestamp};

/// Events kept for subscribers that are behind.
pub const FEED_CAPACITY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Stored,
    Updated,
    Deleted,
    Linked,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Stored => "stored",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Linked => "linked",
        }
    }
}

/// A link made from the event's context. The target's session, author and visibility decide, with the
/// source's, who may hear of it (never serialized).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkChange {
    pub to_id: Uuid,
    pub relation: String,
    #[serde(skip)]
    pub to_session_id: String,
    #[serde(skip)]
    pub to_agent_id: String,
    #[serde(skip)]
    pub to_visibility: crate::domain::Visibility,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeEvent {
    /// Order of the event in this process's feed (gaps: events a subscriber may not see).
    pub seq: u64,
    pub kind: ChangeKind,
    pub at: Timestamp,
    /// The context as stored (for a delete: as it was; for a link: its source).
    pub context: Context,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkChange>,
}

impl ChangeEvent {
    /// Whether a subscriber with `scope` may hear of it: exactly when it may read the context (and, for a
    /// link, its target too).
    pub fn visible_to(&self, scope: &ReadScope) -> bool {
        scope.may_see(&self.context)
            && self.link.as_ref().is_none_or(|link| {
                scope.may_see_session(&link.to_session_id)
                    && scope.may_see_visibility(link.to_visibility, &link.to_agent_id)
            })
    }

    /// Whether it is about session `session` (and, when given, context `context`: its source or target).
    pub fn concerns(&self, session: Option<&str>, context: Option<Uuid>) -> bool {
        session.is_none_or(|s| self.context.session_id == s)
            && context.is_none_or(|id| self.context.id == id || self.link.as_ref().is_some_and(|l| l.to_id == id))
    }
}

/// What a subscriber receives next.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Event(Arc<ChangeEvent>),
    /// It fell behind: this many events were dropped before the next one it gets.
    Missed(u64),
}

/// Subscribers at once (server-sent event streams and MCP subscriptions together): each costs a task and a
/// wake-up per change, and a stream outlives the request limits that bound other calls.
pub const MAX_SUBSCRIBERS: usize = 256;
/// Subscribers one authenticated agent may hold at once, so that one key cannot take every slot. The
/// local trusted principal (authentication off) is every caller at once and is not counted.
pub const MAX_SUBSCRIBERS_PER_AGENT: usize = 32;

pub struct ChangeFeed {
    sender: broadcast::Sender<Arc<ChangeEvent>>,
    seq: AtomicU64,
    slots: Arc<tokio::sync::Semaphore>,
    per_agent: Arc<Mutex<HashMap<String, usize>>>,
}

impl ChangeFeed {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            sender,
            seq: AtomicU64::new(0),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_SUBSCRIBERS)),
            per_agent: Arc::default(),
        }
    }

    /// Publishes a change. A delete carries a tombstone: who, where and which version, not the content (an
    /// expired context's content is not served again).
    pub fn publish(&self, kind: ChangeKind, context: &Context, link: Option<LinkChange>) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let mut context = context.clone();
        if kind == ChangeKind::Deleted {
            context.content = String::new();
            context.tags = Vec::new();
            context.metadata = Default::default();
        }
        let event = ChangeEvent { seq, kind, at: Timestamp::now(), context, link };
        // No subscriber: nothing to do.
        let _ = self.sender.send(Arc::new(event));
    }

    /// A new subscriber for `principal`, or `ResourceExhausted` when `MAX_SUBSCRIBERS` are subscribed or
    /// its agent holds `MAX_SUBSCRIBERS_PER_AGENT`.
    pub fn subscribe(&self, principal: &Principal) -> crate::error::ServiceResult<Subscriber> {
        let agent = match principal.trusted {
            true => None,
            false => Some(AgentSlot::take(&self.per_agent, &principal.agent_id)?),
        };
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            crate::error::ServiceError::ResourceExhausted(format!(
                "{MAX_SUBSCRIBERS} change subscriptions are open; retry later"
            ))
        })?;
        Ok(Subscriber { receiver: self.sender.subscribe(), _slot: slot, _agent: agent })
    }
}

/// One of an agent's subscriptions, given back when dropped.
struct AgentSlot {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    agent: String,
}

impl AgentSlot {
    fn take(counts: &Arc<Mutex<HashMap<String, usize>>>, agent: &str) -> crate::error::ServiceResult<Self> {
        let mut held = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(agent.to_string()).or_default();
        if *n >= MAX_SUBSCRIBERS_PER_AGENT {
            return Err(crate::error::ServiceError::ResourceExhausted(format!(
                "this agent holds {MAX_SUBSCRIBERS_PER_AGENT} change subscriptions; close one first"
            )));
        }
        *n += 1;
        Ok(Self { counts: counts.clone(), agent: agent.to_string() })
    }
}

impl Drop for AgentSlot {
    fn drop(&mut self) {
        let mut held = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.agent);
            }
        }
    }
}

pub struct Subscriber {
    receiver: broadcast::Receiver<Arc<ChangeEvent>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _agent: Option<AgentSlot>,
}

impl Subscriber {
    /// The next event or gap; None when the feed is gone (the service stopped).
    pub async fn next(&mut self) -> Option<Received> {
        match self.receiver.recv().await {
            Ok(event) => Some(Received::Event(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Received::Missed(missed)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event `scope` may see that `wanted` selects, or a gap. A watched credential is checked again
    /// when due (`CredentialWatch`): a narrowed one narrows `scope`; None when it no longer holds (revoked,
    /// expired, no read permission) or the feed ends.
    pub async fn next_checked(
        &mut self,
        scope: &mut ReadScope,
        credential: &mut Option<crate::auth::CredentialWatch>,
        wanted: impl Fn(&ChangeEvent) -> bool,
    ) -> Option<Received> {
        loop {
            tokio::select! {
                received = self.next() => match received? {
                    Received::Event(event) if !(event.visible_to(scope) && wanted(&event)) => continue,
                    other => return Some(other),
                },
                _ = crate::auth::CredentialWatch::due(credential) => {
                    let principal = credential.as_mut()?.check().await?;
                    principal.require(crate::auth::Permission::Read).ok()?;
                    *scope = principal.read_scope(&principal.agent_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Visibility;

    fn context(session: &str, author: &str, visibility: Visibility) -> Context {
        Context {
            id: Uuid::now_v7(),
            session_id: session.into(),
            agent_id: author.into(),
            context_type: "note".into(),
            content: "x".into(),
            tags: vec![],
            metadata: Default::default(),
            visibility,
            created_at: Timestamp(1),
            updated_at: Timestamp(1),
            version: 1,
            expires_at: None,
            content_hash: "h".into(),
        }
    }

    #[tokio::test]
    async fn a_subscriber_behind_the_ring_is_told_what_it_missed_and_sees_only_its_scope() {
        let feed = ChangeFeed::new(4);
        let local = Principal::local_trusted("a");
        let mut slow = feed.subscribe(&local).unwrap();
        for _ in 0..10 {
            feed.publish(ChangeKind::Stored, &context("s", "a", Visibility::Public), None);
        }
        assert_eq!(slow.next().await, Some(Received::Missed(6)), "10 published, 4 kept");
        let Some(Received::Event(event)) = slow.next().await else { panic!("the oldest kept event") };
        assert_eq!(event.seq, 7);

        let mut bob = feed.subscribe(&local).unwrap();
        let mut scope = ReadScope { agent_id: "bob".into(), admin: false, sessions: Some(vec!["s".into()]) };
        feed.publish(ChangeKind::Stored, &context("other", "a", Visibility::Public), None);
        feed.publish(ChangeKind::Stored, &context("s", "a", Visibility::Private), None);
        let visible = context("s", "bob", Visibility::Private);
        feed.publish(ChangeKind::Updated, &visible, None);
        let Some(Received::Event(event)) = bob.next_checked(&mut scope, &mut None, |_| true).await else {
            panic!("an event")
        };
        assert_eq!((event.kind, event.context.id), (ChangeKind::Updated, visible.id), "the first one bob may see");
    }

    #[test]
    fn one_agent_cannot_take_every_subscription_slot() {
        let feed = ChangeFeed::new(4);
        let agent = |name: &str| Principal { trusted: false, ..Principal::local_trusted(name) };
        let (mallory, alice) = (agent("mallory"), agent("alice"));
        let mut held: Vec<Subscriber> =
            (0..MAX_SUBSCRIBERS_PER_AGENT).map(|_| feed.subscribe(&mallory).unwrap()).collect();
        let refused = feed.subscribe(&mallory).err().expect("over the per-agent cap");
        assert_eq!(refused.code(), crate::error::ErrorCode::ResourceExhausted);
        assert!(feed.subscribe(&alice).is_ok(), "another agent still subscribes");
        held.pop();
        assert!(feed.subscribe(&mallory).is_ok(), "a closed subscription gives its slot back");
        drop(held);
        // The local trusted principal is every caller at once: only the overall cap holds it.
        let local = Principal::local_trusted("a");
        let all: Vec<Subscriber> = (0..MAX_SUBSCRIBERS).map(|_| feed.subscribe(&local).unwrap()).collect();
        assert!(feed.subscribe(&alice).is_err(), "no slot left");
        drop(all);
        assert!(feed.per_agent.lock().unwrap().is_empty(), "every agent slot given back");
    }
}
