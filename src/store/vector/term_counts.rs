//! How many points hold each lexical term: the planning statistic that lets the embedded store's lexical
//! stage skip the posting lists of common terms.
//!
//! qdrant-edge walks every query term's posting list to the end unless its max-score pruning can skip it,
//! and a term held by a large share of the points never can: each of its entries could still lift a point
//! into the top. A term in more than `common_term_points` points is therefore not walked; it still scores
//! the candidates that the rarer terms and the vector stage found (the common-terms split of Lucene and
//! Elasticsearch). The engine computes document frequencies per query but does not expose them, so the
//! store keeps its own: counted by one scan of the shard when a server starts (or on a process's first
//! lexical search), then kept current by every upsert and delete. The counts only choose which lists are
//! walked (the engine's own IDF still scores), so they may be slightly off without changing a score: a
//! point written while the scan runs can be counted twice or not at all until the next start.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU8, Ordering};

const NOT_COUNTED: u8 = 0;
const COUNTING: u8 = 1;
const COUNTED: u8 = 2;

#[derive(Default)]
pub struct TermCounts {
    state: AtomicU8,
    points: RwLock<HashMap<u32, u32>>,
}

/// Which posting lists a lexical query walks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walk {
    /// Every term's (no term is common, or the counts are not ready yet).
    All,
    /// Only these terms' (the query's rare terms); every term then scores what they and the vector stage
    /// found.
    Rare(Vec<u32>),
    /// None: every term is common, so the query only scores the candidates the vector stage found.
    None,
}

impl TermCounts {
    /// Claims the scan that counts the terms: true for exactly one caller, the one that must run it. Until
    /// it has run, every query walks every term.
    pub fn claim_count(&self) -> bool {
        self.state.compare_exchange(NOT_COUNTED, COUNTING, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Whether writes must keep the counts current (from the moment the scan starts).
    pub fn tracking(&self) -> bool {
        self.state.load(Ordering::Acquire) != NOT_COUNTED
    }

    /// Adds the terms of points the scan read, or of points just written.
    pub fn add<'a>(&self, points: impl IntoIterator<Item = &'a [u32]>) {
        let mut counts = self.points.write().unwrap_or_else(|e| e.into_inner());
        for terms in points {
            for term in terms {
                *counts.entry(*term).or_default() += 1;
            }
        }
    }

    /// Takes away the terms of points replaced or deleted.
    pub fn remove<'a>(&self, points: impl IntoIterator<Item = &'a [u32]>) {
        let mut counts = self.points.write().unwrap_or_else(|e| e.into_inner());
        for terms in points {
            for term in terms {
                if let Some(n) = counts.get_mut(term) {
                    *n -= 1;
                    if *n == 0 {
                        counts.remove(term);
                    }
                }
            }
        }
    }

    /// Marks the scan done: from now on queries are planned with the counts.
    pub fn counted(&self) {
        self.state.store(COUNTED, Ordering::Release);
    }

    /// Gives the scan back after it failed, for the next search to try again.
    pub fn uncounted(&self) {
        self.points.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.state.store(NOT_COUNTED, Ordering::Release);
    }

    /// How many points hold `term`, once counted.
    pub fn points_with(&self, term: u32) -> Option<u32> {
        if self.state.load(Ordering::Acquire) != COUNTED {
            return None;
        }
        Some(self.points.read().unwrap_or_else(|e| e.into_inner()).get(&term).copied().unwrap_or(0))
    }

    /// The walk for a query's `terms`: a term held by more than `common_above` points is common (0: none is).
    pub fn plan(&self, terms: &[u32], common_above: u32) -> Walk {
        if common_above == 0 || self.state.load(Ordering::Acquire) != COUNTED {
            return Walk::All;
        }
        let counts = self.points.read().unwrap_or_else(|e| e.into_inner());
        let rare: Vec<u32> =
            terms.iter().copied().filter(|t| counts.get(t).copied().unwrap_or(0) <= common_above).collect();
        match rare.len() {
            n if n == terms.len() => Walk::All,
            0 => Walk::None,
            _ => Walk::Rare(rare),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_walk_every_term_until_counted_then_only_the_rare_ones() {
        let counts = TermCounts::default();
        let points: Vec<Vec<u32>> = (0..10u32).map(|n| if n < 2 { vec![1, 2, 3] } else { vec![1, 2] }).collect();
        assert!(!counts.tracking());
        assert!(counts.claim_count() && !counts.claim_count(), "one scan");
        assert!(counts.tracking());
        counts.add(points.iter().map(Vec::as_slice));
        assert_eq!(counts.plan(&[1, 3], 5), Walk::All, "not counted yet");
        assert_eq!(counts.points_with(1), None);
        counts.counted();
        assert_eq!(counts.points_with(1), Some(10));
        assert_eq!(counts.points_with(9), Some(0));
        assert_eq!(counts.plan(&[1, 3], 5), Walk::Rare(vec![3]));
        assert_eq!(counts.plan(&[3, 9], 5), Walk::All, "an unseen term is rare");
        assert_eq!(counts.plan(&[1, 2], 5), Walk::None);
        assert_eq!(counts.plan(&[1, 2], 10), Walk::All, "at the bound a term is still walked");
        assert_eq!(counts.plan(&[1, 2], 0), Walk::All, "0 walks every term");
        counts.remove(points[..6].iter().map(Vec::as_slice));
        assert_eq!((counts.points_with(1), counts.points_with(3)), (Some(4), Some(0)));
        assert_eq!(counts.plan(&[1, 2], 5), Walk::All);
        counts.remove([[3u32].as_slice()]);
        assert_eq!(counts.points_with(3), Some(0), "never below zero");
        counts.uncounted();
        assert!(!counts.tracking() && counts.points_with(1).is_none());
        assert!(counts.claim_count(), "a failed scan can be claimed again");
    }
}
