//! Recall statistics: how often, and when last, each context was returned by `search_context` or read by
//! `get_context`. Counting happens in memory on the request path (a map update, no store round trip); the
//! tallies go to the graph in one batch at each flush of the maintenance loop, so a recall shows in the
//! statistics within `flush_interval`. Tallies add up, so replicas sharing a graph count together.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

use super::ContextService;
use crate::domain::{Context, Timestamp};
use crate::error::ServiceResult;
use crate::store::graph::{RecallStats, RecallTally};

/// Distinct contexts tallied between two flushes at most: past it, further recalls of new contexts wait for
/// the next flush's room (counted then, not lost, only when they recur), so memory stays bounded.
const MAX_PENDING_TALLIES: usize = 100_000;

/// Tallies written per graph transaction.
const RECALL_WRITE_BATCH: usize = 2000;

/// Recency halves every week without a write or a recall.
const RECENCY_HALF_LIFE_MS: f64 = 7.0 * 24.0 * 3600.0 * 1000.0;

/// Recalls counted since the last flush.
#[derive(Default)]
pub(super) struct RecallLog {
    pending: Mutex<HashMap<Uuid, (u64, Timestamp)>>,
    /// Held by a flush from taking the tallies until they are written.
    flushing: tokio::sync::Mutex<()>,
}

impl RecallLog {
    pub(super) fn note(&self, ids: impl IntoIterator<Item = Uuid>) {
        let now = Timestamp::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let room = pending.len() < MAX_PENDING_TALLIES;
            match pending.get_mut(&id) {
                Some(tally) => *tally = (tally.0 + 1, now),
                None if room => {
                    pending.insert(id, (1, now));
                }
                None => {}
            }
        }
    }

    fn take(&self) -> Vec<RecallTally> {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        taken.into_iter().map(|(id, (count, last_at))| RecallTally { id, count, last_at }).collect()
    }

    /// Puts tallies back after a failed write, added to whatever was counted meanwhile.
    fn restore(&self, tallies: Vec<RecallTally>) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for tally in tallies {
            let room = pending.len() < MAX_PENDING_TALLIES;
            match pending.get_mut(&tally.id) {
                Some(entry) => *entry = (entry.0 + tally.count, entry.1.max(tally.last_at)),
                None if room => {
                    pending.insert(tally.id, (tally.count, tally.last_at));
                }
                // Past the bound while the graph does not answer: these recalls are not counted.
                None => {}
            }
        }
    }
}

/// How recently a context was in use: 1 when written or recalled just now, halving every week since.
pub fn recency_score(context: &Context, stats: Option<&RecallStats>, now: Timestamp) -> f64 {
    let last_use = stats.and_then(|s| s.last_recalled_at).map_or(context.updated_at, |at| at.max(context.updated_at));
    let age = (now.millis() - last_use.millis()).max(0) as f64;
    0.5f64.powf(age / RECENCY_HALF_LIFE_MS)
}

/// How much a context has been recalled: 0 never, 0.1 once, about 0.65 after 10 recalls, near 1 past 40.
pub fn recall_score(stats: Option<&RecallStats>) -> f64 {
    let count = stats.map_or(0, |s| s.count).min(10_000) as i32;
    1.0 - 0.9f64.powi(count)
}

impl ContextService {
    /// Writes the recalls counted since the last call to the graph; on failure they are kept for the next.
    /// Flushes run one at a time: when this returns, every recall counted before the call is in the graph,
    /// also those a flush already under way (the maintenance loop's) had taken. Returns how many contexts'
    /// tallies this call wrote.
    pub async fn flush_recalls(&self) -> ServiceResult<usize> {
        let _one_at_a_time = self.recalls.flushing.lock().await;
        let mut tallies = self.recalls.take();
        let total = tallies.len();
        while !tallies.is_empty() {
            let rest = tallies.split_off(tallies.len().min(RECALL_WRITE_BATCH));
            if let Err(err) = self.graph.record_recalls(&tallies).await {
                tallies.extend(rest);
                self.recalls.restore(tallies);
                return Err(err.into());
            }
            tallies = rest;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_add_up_and_survive_a_failed_flush() {
        let log = RecallLog::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        log.note([a, b, a]);
        let taken = log.take();
        assert_eq!(taken.iter().find(|t| t.id == a).unwrap().count, 2);
        log.note([a]);
        log.restore(taken);
        let full = RecallLog::default();
        full.note((0..MAX_PENDING_TALLIES + 10).map(|_| Uuid::now_v7()));
        full.restore(vec![RecallTally { id: Uuid::now_v7(), count: 1, last_at: Timestamp(1) }]);
        assert_eq!(full.take().len(), MAX_PENDING_TALLIES, "bounded, also when tallies come back");
        let again = log.take();
        assert_eq!(again.iter().find(|t| t.id == a).unwrap().count, 3);
        assert_eq!(again.iter().find(|t| t.id == b).unwrap().count, 1);
        assert!(log.take().is_empty());
    }

    #[test]
    fn scores_fall_with_age_and_rise_with_recalls() {
        let now = Timestamp(10 * RECENCY_HALF_LIFE_MS as i64);
        let context = Context {
            id: Uuid::now_v7(),
            session_id: "s".into(),
            agent_id: "a".into(),
            context_type: "note".into(),
            content: "x".into(),
            tags: Vec::new(),
            metadata: Default::default(),
            visibility: crate::domain::Visibility::Public,
            created_at: now,
            updated_at: now,
            version: 1,
            expires_at: None,
            content_hash: crate::domain::content_hash("x"),
        };
        assert!((recency_score(&context, None, now) - 1.0).abs() < 1e-9);
        let week_old = Context { updated_at: Timestamp(now.millis() - RECENCY_HALF_LIFE_MS as i64), ..context };
        assert!((recency_score(&week_old, None, now) - 0.5).abs() < 1e-9);
        let recalled = RecallStats { count: 1, last_recalled_at: Some(now) };
        assert!((recency_score(&week_old, Some(&recalled), now) - 1.0).abs() < 1e-9, "a recall renews it");
        assert_eq!(recall_score(None), 0.0);
        assert!((recall_score(Some(&recalled)) - 0.1).abs() < 1e-9);
        let many = RecallStats { count: 1_000_000, last_recalled_at: None };
        assert!(recall_score(Some(&many)) <= 1.0 && recall_score(Some(&many)) > 0.99);
    }
}
