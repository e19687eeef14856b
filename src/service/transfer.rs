//! Export and import of everything in JSON Lines: sessions, contexts with their embeddings and previous
//! versions, relations, agent state. Import is idempotent: what is already there is left alone, so running
//! it twice (or after an interruption) changes nothing the first run did.

use std::io::{BufRead, Write};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ContextService;
use crate::domain::{AgentState, Context, ContextVersion, ReadScope, Relation, Session, Timestamp};
use crate::error::{ServiceError, ServiceResult, StoreError};
use crate::store::VectorPoint;
use crate::store::graph::{InsertOutcome, StateKey};

pub const FORMAT: &str = "context-store-export";
pub const FORMAT_VERSION: u32 = 1;
const PAGE: usize = 500;
/// Contexts read ahead and imported concurrently.
const IMPORT_CHUNK: usize = 256;
const IMPORT_PARALLELISM: usize = 16;

type ImportedContext = (Context, Vec<f32>, Vec<ContextVersion>);

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Header { format: String, version: u32, exported_at: Timestamp },
    Session(Session),
    Context { context: Context, embedding: Vec<f32>, versions: Vec<ContextVersion> },
    Relation(Relation),
    AgentState(AgentState),
}

/// What an export wrote or an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TransferCounts {
    pub sessions: u64,
    pub contexts: u64,
    pub versions: u64,
    pub relations: u64,
    pub agent_states: u64,
    /// Import only: records already present, left as they were.
    pub unchanged: u64,
}

fn write_line(out: &mut impl Write, record: &Record) -> ServiceResult<()> {
    serde_json::to_writer(&mut *out, record).map_err(|e| ServiceError::Internal(e.to_string()))?;
    out.write_all(b"\n").map_err(|e| ServiceError::Unavailable(format!("cannot write the export: {e}")))
}

impl ContextService {
    /// Writes every item as JSON Lines; `progress` gets the number of records written so far.
    pub async fn export(&self, out: &mut impl Write, mut progress: impl FnMut(u64)) -> ServiceResult<TransferCounts> {
        let mut counts = TransferCounts::default();
        let mut written = 0u64;
        let mut emit = |out: &mut dyn Write, record: Record| -> ServiceResult<()> {
            let mut out = out;
            write_line(&mut out, &record)?;
            written += 1;
            progress(written);
            Ok(())
        };
        emit(out, Record::Header { format: FORMAT.into(), version: FORMAT_VERSION, exported_at: Timestamp::now() })?;
        let mut after: Option<String> = None;
        loop {
            let sessions = self.graph.list_sessions(after.as_deref(), PAGE, None).await?;
            let Some(last) = sessions.last() else { break };
            after = Some(last.id.clone());
            for session in sessions {
                counts.sessions += 1;
                emit(out, Record::Session(session))?;
            }
        }
        let mut after: Option<Uuid> = None;
        let mut relations = Vec::new();
        loop {
            let entries = self.graph.scan_index_entries(after, PAGE).await?;
            let Some(last) = entries.last() else { break };
            after = Some(last.context.id);
            let ids: Vec<Uuid> = entries.iter().map(|e| e.context.id).collect();
            relations.extend(self.graph.relations_from(&ids).await?);
            for entry in entries {
                let versions = self.graph.context_versions(entry.context.id, None, None).await?;
                counts.contexts += 1;
                counts.versions += versions.len() as u64;
                emit(out, Record::Context { context: entry.context, embedding: entry.embedding, versions })?;
            }
        }
        // Relations after every context, so an import can link both ends.
        for relation in relations {
            counts.relations += 1;
            emit(out, Record::Relation(relation))?;
        }
        let mut after: Option<StateKey> = None;
        loop {
            let states = self.graph.scan_states(after.as_ref(), PAGE).await?;
            let Some(last) = states.last() else { break };
            after = Some(StateKey {
                agent_id: last.agent_id.clone(),
                session_id: last.session_id.clone(),
                key: last.key.clone(),
            });
            for state in states {
                counts.agent_states += 1;
                emit(out, Record::AgentState(state))?;
            }
        }
        self.vectors.flush().await?;
        self.state_vectors.flush().await?;
        Ok(counts)
    }

    /// Reads JSON Lines written by `export` and stores what is missing; `progress` gets lines read so far.
    pub async fn import(&self, input: impl BufRead, mut progress: impl FnMut(u64)) -> ServiceResult<TransferCounts> {
        let mut counts = TransferCounts::default();
        let mut contexts = Vec::new();
        for (index, line) in input.lines().enumerate() {
            let line = line.map_err(|e| ServiceError::invalid(format!("cannot read the import: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(&line)
                .map_err(|e| ServiceError::invalid(format!("line {}: not an export record: {e}", index + 1)))?;
            // Contexts are imported in concurrent chunks; anything else waits for the contexts before it.
            if !matches!(record, Record::Context { .. }) && !contexts.is_empty() {
                self.import_contexts(std::mem::take(&mut contexts), &mut counts).await?;
            }
            match record {
                Record::Header { format, version, .. } => {
                    if format != FORMAT || version != FORMAT_VERSION {
                        return Err(ServiceError::invalid(format!("unsupported export format {format} v{version}")));
                    }
                }
                Record::Session(session) => match self.graph.create_session(&session).await {
                    Ok(()) => counts.sessions += 1,
                    Err(StoreError::Conflict(_)) => counts.unchanged += 1,
                    Err(err) => return Err(err.into()),
                },
                Record::Context { context, embedding, versions } => {
                    contexts.push((context, embedding, versions));
                    if contexts.len() >= IMPORT_CHUNK {
                        self.import_contexts(std::mem::take(&mut contexts), &mut counts).await?;
                    }
                }
                Record::Relation(relation) => match self.graph.link(&relation).await {
                    Ok(()) => counts.relations += 1,
                    // An end was not imported (its text already existed under another id): nothing to link.
                    Err(StoreError::NotFound) => counts.unchanged += 1,
                    Err(err) => return Err(err.into()),
                },
                Record::AgentState(state) => {
                    let key = StateKey {
                        agent_id: state.agent_id.clone(),
                        session_id: state.session_id.clone(),
                        key: state.key.clone(),
                    };
                    match self.graph.get_state(&key).await? {
                        Some(current) if current.value == state.value => counts.unchanged += 1,
                        _ => {
                            // Through the service's state write, so the entry gets its embedding and point.
                            self.write_state(&state, None).await?;
                            counts.agent_states += 1;
                        }
                    }
                }
            }
            progress(index as u64 + 1);
        }
        self.import_contexts(contexts, &mut counts).await?;
        self.flush().await?;
        Ok(counts)
    }

    /// Imports contexts `IMPORT_PARALLELISM` at a time (their writes share group commits); the first
    /// failure stops the import after the contexts already in flight.
    async fn import_contexts(&self, chunk: Vec<ImportedContext>, counts: &mut TransferCounts) -> ServiceResult<()> {
        let mut outcomes = futures::stream::iter(chunk.into_iter().map(|item| self.import_context(item)))
            .buffer_unordered(IMPORT_PARALLELISM);
        while let Some(outcome) = outcomes.next().await {
            match outcome? {
                Some(versions) => {
                    counts.contexts += 1;
                    counts.versions += versions;
                }
                None => counts.unchanged += 1,
            }
        }
        Ok(())
    }

    /// One context with its embedding and versions, unless it is there already (`None`); returns the
    /// number of versions imported.
    async fn import_context(&self, (context, embedding, versions): ImportedContext) -> ServiceResult<Option<u64>> {
        if self.graph.get_context(context.id).await?.is_some() {
            return Ok(None);
        }
        let everything = ReadScope { agent_id: String::new(), admin: true, sessions: None };
        let _ordered = self.item_lock(context.id).lock().await;
        // A deleted context whose purge has not run yet must not come back with its old versions and links.
        self.graph.purge_context(context.id).await?;
        match self.graph.insert_context(&context, &embedding, &everything).await? {
            InsertOutcome::Duplicate(_) => Ok(None),
            InsertOutcome::Inserted { journal_seq } => {
                let id = context.id;
                if let Err(err) = self.vectors.upsert(vec![VectorPoint { context, vector: embedding }]).await {
                    self.graph.rollback_insert(id).await?;
                    self.settle_after_rollback(id, journal_seq).await;
                    return Err(err.into());
                }
                self.written(journal_seq);
                self.graph.import_versions(id, &versions).await?;
                Ok(Some(versions.len() as u64))
            }
        }
    }
}
