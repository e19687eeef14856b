//! Point reads coalesced into shared statements. On Neo4j a read costs the server a pool reset and a
//! RUN/PULL exchange, whatever it reads; under concurrent load most of the server's work per `get_context` or
//! `get_state` is that exchange, not the lookup. Lookups therefore go to one task that sends them as
//! `UNWIND` statements: the first lookup goes out at once, and lookups that arrive while the statements in
//! flight (at most `IN_FLIGHT`) are running wait and go out together in the next. A lone caller waits for
//! nothing; many callers share round trips.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::rows::{context_of, state_of};
use super::{Neo4jGraphStore, cypher, query, rows};
use crate::domain::{AgentState, Context, Timestamp};
use crate::error::{StoreError, StoreResult};
use crate::store::graph::StateKey;

/// Statements in flight at once; more lookups wait and are sent together.
const IN_FLIGHT: usize = 4;
/// Lookups in one statement at most.
const MAX_BATCH: usize = 256;

enum Lookup {
    Contexts { ids: Vec<Uuid>, reply: oneshot::Sender<StoreResult<Vec<Context>>> },
    State { key: StateKey, reply: oneshot::Sender<StoreResult<Option<AgentState>>> },
}

/// The handle the store keeps; the task ends when every handle is dropped.
pub(super) struct Lookups {
    queue: mpsc::UnboundedSender<Lookup>,
}

impl Lookups {
    /// Starts the task that answers lookups through `store` (a clone without lookups of its own).
    pub(super) fn start(store: Neo4jGraphStore) -> Self {
        let (queue, mut incoming) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(IN_FLIGHT));
            while let Some(first) = incoming.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match incoming.try_recv() {
                        Ok(lookup) => batch.push(lookup),
                        Err(_) => break,
                    }
                }
                let store = store.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    answer(&store, batch).await;
                });
            }
        });
        Self { queue }
    }

    pub(super) async fn contexts(&self, ids: &[Uuid]) -> StoreResult<Vec<Context>> {
        let (reply, answer) = oneshot::channel();
        self.send(Lookup::Contexts { ids: ids.to_vec(), reply })?;
        answer.await.map_err(|_| stopped())?
    }

    pub(super) async fn state(&self, key: &StateKey) -> StoreResult<Option<AgentState>> {
        let (reply, answer) = oneshot::channel();
        self.send(Lookup::State { key: key.clone(), reply })?;
        answer.await.map_err(|_| stopped())?
    }

    fn send(&self, lookup: Lookup) -> StoreResult<()> {
        self.queue.send(lookup).map_err(|_| stopped())
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("neo4j: the lookup task stopped".into())
}

/// Answers a batch with at most one statement per kind of lookup, both at once.
async fn answer(store: &Neo4jGraphStore, batch: Vec<Lookup>) {
    let mut context_asks = Vec::new();
    let mut state_asks = Vec::new();
    for lookup in batch {
        match lookup {
            Lookup::Contexts { ids, reply } => context_asks.push((ids, reply)),
            Lookup::State { key, reply } => state_asks.push((key, reply)),
        }
    }
    tokio::join!(answer_contexts(store, context_asks), answer_states(store, state_asks));
}

type ContextAsk = (Vec<Uuid>, oneshot::Sender<StoreResult<Vec<Context>>>);

async fn answer_contexts(store: &Neo4jGraphStore, asks: Vec<ContextAsk>) {
    if asks.is_empty() {
        return;
    }
    let mut ids: Vec<String> = asks.iter().flat_map(|(ids, _)| ids.iter().map(Uuid::to_string)).collect();
    ids.sort_unstable();
    ids.dedup();
    let found: StoreResult<HashMap<Uuid, Context>> = read!(store, |txn| {
        let statement = query(cypher::CONTEXT_GET_MANY).param("ids", ids.clone());
        rows(txn, statement).await?.iter().map(|row| context_of(row).map(|c| (c.id, c))).collect()
    });
    for (ids, reply) in asks {
        let answer = match &found {
            Ok(found) => Ok(ids.iter().filter_map(|id| found.get(id).cloned()).collect()),
            Err(err) => Err(err.clone()),
        };
        let _ = reply.send(answer);
    }
}

type StateAsk = (StateKey, oneshot::Sender<StoreResult<Option<AgentState>>>);

async fn answer_states(store: &Neo4jGraphStore, asks: Vec<StateAsk>) {
    if asks.is_empty() {
        return;
    }
    let keys: Vec<serde_json::Value> = asks
        .iter()
        .map(|(key, _)| {
            serde_json::json!({
                "agent_id": key.agent_id,
                "session_id": key.session_id.clone().unwrap_or_default(),
                "key": key.key,
            })
        })
        .collect();
    let found: StoreResult<HashMap<StateKey, AgentState>> = read!(store, |txn| {
        let statement = query(cypher::STATE_GET_MANY)
            .param("keys", super::rows::bolt(serde_json::Value::Array(keys.clone()))?)
            .param("now", Timestamp::now().millis());
        rows(txn, statement)
            .await?
            .iter()
            .map(|row| {
                let state = state_of(row)?;
                let key = StateKey {
                    agent_id: state.agent_id.clone(),
                    session_id: state.session_id.clone(),
                    key: state.key.clone(),
                };
                Ok((key, state))
            })
            .collect()
    });
    for (key, reply) in asks {
        let answer = match &found {
            Ok(found) => Ok(found.get(&key).cloned()),
            Err(err) => Err(err.clone()),
        };
        let _ = reply.send(answer);
    }
}
