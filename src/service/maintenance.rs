//! Keeping the vector side durable and fast: start-up repair from the index journal, the periodic flush
//! that lets journal entries be cleared, background HNSW optimisation, and full reindex.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::ContextService;
use crate::error::ServiceResult;
use crate::store::VectorPoint;

/// Journal entries repaired per batch.
const REPAIR_BATCH: usize = 500;

#[derive(Debug, Clone)]
pub struct MaintenanceOptions {
    /// How often applied vector writes are flushed (and their journal entries cleared).
    pub flush_interval: Duration,
    /// How often the optimizer is considered.
    pub optimize_interval: Duration,
    /// New points since the last optimisation that make another worthwhile.
    pub optimize_min_new_points: u64,
    /// How often expired contexts and agent state are removed from both stores.
    pub expiry_interval: Duration,
    /// How often the journal is checked for entries no running write will finish: an entry still pending
    /// (and not applied) at two checks in a row is repaired from the graph while the service runs.
    pub repair_interval: Duration,
}

/// What one expiry pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    pub contexts: u64,
    pub agent_states: u64,
}

impl Default for MaintenanceOptions {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(1),
            optimize_interval: Duration::from_secs(30),
            optimize_min_new_points: 1000,
            expiry_interval: Duration::from_secs(60),
            repair_interval: Duration::from_secs(5),
        }
    }
}

impl ContextService {
    /// Re-applies every journaled change to the vector store from the graph's current state, then flushes
    /// and clears the journal. Returns how many entries were repaired. Run before serving.
    pub async fn repair_pending(&self) -> ServiceResult<usize> {
        let mut repaired = 0;
        loop {
            let pending = self.graph.pending_index(REPAIR_BATCH).await?;
            if pending.is_empty() {
                return Ok(repaired);
            }
            let mut ids: Vec<Uuid> = pending.iter().map(|p| p.id).collect();
            ids.sort();
            ids.dedup();
            self.reapply(&ids).await?;
            self.flush_vectors().await?;
            let seqs: Vec<i64> = pending.iter().map(|p| p.seq).collect();
            self.graph.clear_pending(&seqs).await?;
            repaired += pending.len();
        }
    }

    /// After a write was undone in the graph because its vector write failed: that vector write may still
    /// have been applied (a timeout), so the vector side is made to match the graph at once if it can be,
    /// and otherwise by a later repair, since the journal entry stays pending. The caller holds the item
    /// lock.
    pub(super) async fn settle_after_rollback(&self, id: Uuid, journal_seq: i64) {
        match self.reapply(&[id]).await {
            Ok(()) => self.written(journal_seq),
            Err(err) => tracing::warn!(%id, error = %err, "vector side left for the journal repair"),
        }
    }

    /// Makes the vector side of `ids` what the graph holds now: live contexts and state entries upserted to
    /// their collections, the rest deleted. A journal entry names a context or a state point, and the ids of
    /// the two never meet (UUIDv7 and UUIDv8), so each id is settled in both collections.
    async fn reapply(&self, ids: &[Uuid]) -> ServiceResult<()> {
        self.reapply_contexts(ids).await?;
        self.reapply_states(ids).await
    }

    /// Settles the context points of `ids`, then purges those of them left deleted in the graph (a delete
    /// whose purge did not run or failed).
    async fn reapply_contexts(&self, ids: &[Uuid]) -> ServiceResult<()> {
        let entries = self.graph.index_entries(ids).await?;
        let live: std::collections::HashSet<Uuid> = entries.iter().map(|e| e.context.id).collect();
        let points = entries.into_iter().map(|e| VectorPoint { context: e.context, vector: e.embedding }).collect();
        settle_points(self.vectors.as_ref(), ids, points).await?;
        // A state point's id (a UUIDv8) has no context to purge.
        for id in ids.iter().filter(|id| id.get_version_num() != 8 && !live.contains(id)) {
            self.graph.purge_context(*id).await?;
        }
        Ok(())
    }

    /// Repairs, while serving, the journal entries that no running write will finish (a write cancelled
    /// between its graph and vector steps, a failed rollback): entries pending at the previous call and still
    /// pending, and not applied, now. Each item is repaired under its item lock, so a slow write still in
    /// flight is waited for, never raced. Returns how many entries were repaired.
    pub async fn repair_stale(&self) -> ServiceResult<usize> {
        let pending = self.graph.pending_index(REPAIR_BATCH).await?;
        let applied: std::collections::HashSet<i64> =
            self.applied.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect();
        let unfinished: Vec<_> = pending.into_iter().filter(|p| !applied.contains(&p.seq)).collect();
        let stale: Vec<_> = {
            let mut seen = self.seen_pending.lock().unwrap_or_else(|e| e.into_inner());
            let stale = unfinished.iter().filter(|p| seen.contains(&p.seq)).cloned().collect();
            *seen = unfinished.iter().map(|p| p.seq).collect();
            stale
        };
        if stale.is_empty() {
            return Ok(0);
        }
        let mut ids: Vec<Uuid> = stale.iter().map(|p| p.id).collect();
        ids.sort();
        ids.dedup();
        // An id that fails keeps its entries pending for the next pass and the others are settled meanwhile;
        // a backend that is down ends the pass (every id would wait for it).
        let mut failed = std::collections::HashSet::new();
        for id in &ids {
            let _ordered = self.item_lock(*id).lock().await;
            match self.reapply(std::slice::from_ref(id)).await {
                Ok(()) => {}
                Err(err @ crate::error::ServiceError::Unavailable(_)) => return Err(err),
                Err(err) => {
                    tracing::warn!(%id, error = %err, "repair left for the next pass");
                    failed.insert(*id);
                }
            }
        }
        self.flush_vectors().await?;
        let seqs: Vec<i64> = stale.iter().filter(|p| !failed.contains(&p.id)).map(|p| p.seq).collect();
        self.graph.clear_pending(&seqs).await?;
        self.seen_pending.lock().unwrap_or_else(|e| e.into_inner()).retain(|seq| !seqs.contains(seq));
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.metrics.journal_repairs.inc_by(seqs.len() as u64);
        Ok(seqs.len())
    }

    /// Removes contexts and agent state whose TTL has passed at `now`, from both stores (contexts go through
    /// the same journaled delete as `delete_context`). Reads already hide expired items; this frees space.
    pub async fn expire(&self, now: crate::domain::Timestamp) -> ServiceResult<Expired> {
        let mut expired = Expired::default();
        loop {
            let ids = self.graph.expired_contexts(now, REPAIR_BATCH).await?;
            if ids.is_empty() {
                break;
            }
            for id in ids {
                let _ordered = self.item_lock(id).lock().await;
                match self.remove_context(id, None).await {
                    Ok(()) => expired.contexts += 1,
                    // Deleted meanwhile by its author.
                    Err(crate::error::ServiceError::NotFound(_)) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        loop {
            let purged = self.graph.purge_expired_state(now, REPAIR_BATCH).await?;
            expired.agent_states += purged.len() as u64;
            // Each point is settled under its item lock from what the graph holds now: the key may have been
            // set again since the purge, and then its new point must stay. A failure leaves the rest to the
            // repair, their journal entries pending.
            for entry in &purged {
                let _ordered = self.item_lock(entry.id).lock().await;
                self.reapply_states(std::slice::from_ref(&entry.id)).await?;
                self.written(entry.seq);
            }
            if purged.len() < REPAIR_BATCH {
                break;
            }
        }
        Ok(expired)
    }

    /// Flushes the vector store and clears the journal entries whose writes it now holds durably.
    pub async fn flush(&self) -> ServiceResult<usize> {
        let taken: Vec<i64> = std::mem::take(&mut *self.applied.lock().unwrap_or_else(|e| e.into_inner()));
        if taken.is_empty() {
            return Ok(0);
        }
        if let Err(err) = self.flush_vectors().await {
            // Put them back: they stay pending until a flush succeeds.
            self.applied.lock().unwrap_or_else(|e| e.into_inner()).extend(&taken);
            return Err(err);
        }
        self.graph.clear_pending(&taken).await?;
        Ok(taken.len())
    }

    /// Makes every applied change of both collections durable.
    async fn flush_vectors(&self) -> ServiceResult<()> {
        self.vectors.flush().await?;
        Ok(self.state_vectors.flush().await?)
    }

    /// Rebuilds the vector side from the graph: upserts every live context's stored embedding, in id order,
    /// starting after `after` (a checkpoint of an interrupted run), then every agent state entry's (state is
    /// small: it is always rebuilt whole). `progress` is called after each batch of contexts with the number
    /// done in this run and the last id done.
    pub async fn reindex(
        &self,
        batch: usize,
        mut after: Option<Uuid>,
        mut progress: impl FnMut(u64, Uuid),
    ) -> ServiceResult<u64> {
        let mut done = 0u64;
        loop {
            let entries = self.graph.scan_index_entries(after, batch).await?;
            let Some(last) = entries.last().map(|e| e.context.id) else { break };
            after = Some(last);
            done += entries.len() as u64;
            let points = entries.into_iter().map(|e| VectorPoint { context: e.context, vector: e.embedding }).collect();
            self.vectors.upsert(points).await?;
            self.vectors.flush().await?;
            progress(done, last);
        }
        self.vectors.flush().await?;
        let mut after_state: Option<Uuid> = None;
        loop {
            let entries = self.graph.scan_state_index(after_state, batch).await?;
            let Some(last) = entries.last().map(|e| e.point_id) else { break };
            after_state = Some(last);
            let points: Vec<_> = entries
                .into_iter()
                .filter_map(|e| crate::store::vector::state_points::state_point(&e.state, e.point_id, e.embedding))
                .collect();
            if !points.is_empty() {
                self.state_vectors.upsert(points).await?;
            }
        }
        self.state_vectors.flush().await?;
        Ok(done)
    }

    /// The background loop: flush often, optimise when enough points arrived. Flush and optimise never
    /// overlap (qdrant-edge requires it). Ends with a final flush when `stop` is cancelled.
    pub async fn run_maintenance(&self, options: MaintenanceOptions, stop: CancellationToken) {
        let mut flush_tick = tokio::time::interval(options.flush_interval);
        let mut optimize_tick = tokio::time::interval(options.optimize_interval);
        let mut expiry_tick = tokio::time::interval(options.expiry_interval);
        let mut repair_tick = tokio::time::interval(options.repair_interval);
        repair_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        expiry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        optimize_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut points_at_last_optimize, mut state_points_at_last_optimize) = (0u64, 0u64);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = expiry_tick.tick() => {
                    match self.expire(crate::domain::Timestamp::now()).await {
                        Ok(expired) if expired != Expired::default() => tracing::info!(?expired, "expired items removed"),
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = %err, "expiry pass failed; will retry"),
                    }
                }
                _ = repair_tick.tick() => {
                    match self.repair_stale().await {
                        Ok(0) => {}
                        Ok(repaired) => tracing::warn!(repaired, "re-indexed journal entries no write finished"),
                        Err(err) => tracing::warn!(error = %err, "journal repair failed; will retry"),
                    }
                }
                _ = flush_tick.tick() => {
                    if let Err(err) = self.flush().await {
                        tracing::warn!(error = %err, "vector flush failed; will retry");
                    }
                    if let Err(err) = self.flush_recalls().await {
                        tracing::warn!(error = %err, "recall statistics not written; will retry");
                    }
                }
                _ = optimize_tick.tick() => {
                    let minimum = options.optimize_min_new_points;
                    optimize_when_grown(self.vectors.as_ref(), &mut points_at_last_optimize, minimum).await;
                    optimize_when_grown(self.state_vectors.as_ref(), &mut state_points_at_last_optimize, minimum).await;
                    let _ = self.refresh_item_metrics().await;
                    // Optimising copies segments and bursts of requests leave freed buffers: give them back.
                    tokio::task::spawn_blocking(crate::memory::trim);
                }
            }
        }
        if let Err(err) = self.flush().await {
            tracing::error!(error = %err, "final vector flush failed; the journal will repair it at start-up");
        }
        if let Err(err) = self.flush_recalls().await {
            tracing::warn!(error = %err, "the last recall statistics were not written");
        }
    }
}

/// Optimises `store` when enough points arrived since the last time. Re-indexing cost grows with the index,
/// so it waits for proportionally more new points as it grows (unindexed points are still found, by exact
/// search).
async fn optimize_when_grown(store: &dyn crate::store::VectorStore, at_last: &mut u64, minimum: u64) {
    let Ok(points) = store.count().await else { return };
    if points.saturating_sub(*at_last) < minimum.max(*at_last / 4) {
        return;
    }
    let started = std::time::Instant::now();
    match store.optimize().await {
        Ok(changed) => {
            *at_last = points;
            tracing::info!(points, changed, seconds = started.elapsed().as_secs_f64(), "vector optimize done");
        }
        Err(err) => tracing::warn!(error = %err, "vector optimize failed"),
    }
}

/// Makes `store` hold exactly `points` among `ids`: they are upserted, the other ids deleted.
pub(super) async fn settle_points(
    store: &dyn crate::store::VectorStore,
    ids: &[Uuid],
    points: Vec<VectorPoint>,
) -> ServiceResult<()> {
    let live: std::collections::HashSet<Uuid> = points.iter().map(|p| p.context.id).collect();
    let gone: Vec<Uuid> = ids.iter().copied().filter(|id| !live.contains(id)).collect();
    if !points.is_empty() {
        store.upsert(points).await?;
    }
    if !gone.is_empty() {
        store.delete(&gone).await?;
    }
    Ok(())
}
