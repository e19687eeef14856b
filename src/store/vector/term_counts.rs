//! How many points hold each lexical term: the planning statistic that lets the embedded store's lexical
//! stage skip the posting lists of common terms, and the document frequencies that score what it finds.
//!
//! qdrant-edge walks every query term's posting list to the end unless its max-score pruning can skip it,
//! and a term held by a large share of the points never can: each of its entries could still lift a point
//! into the top. A term in more than `common_term_points` points is therefore not walked; it still scores
//! the candidates the rarer terms found, or the vector stage's when every term is common (the
//! common-terms split of Lucene and Elasticsearch). The engine computes document frequencies per query but
//! does not expose them, so the store keeps its own: counted by one scan of the shard, in id order, when a
//! server starts (or on a process's first lexical search), then kept by every upsert and delete. With them
//! the store scores those candidates itself (`idf`), by the engine's formula: asking the engine to score a
//! list of ids walks each term's compressed posting list to every id, a chunk decompressed per id and term.
//!
//! A write and a page of the scan never overlap (`Progress`): while the scan runs, a write counts only the
//! points the scan has already passed, and the scan reads the others as they are by then, so each point is
//! counted once. The counts only choose which lists are walked; the engine's own IDF still scores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

const NOT_COUNTED: u8 = 0;
const COUNTING: u8 = 1;
const COUNTED: u8 = 2;

/// How long after a failed scan the next one may start.
const RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct TermCounts {
    state: AtomicU8,
    counts: RwLock<Counts>,
    progress: Mutex<Progress>,
}

#[derive(Default)]
struct Counts {
    /// Points holding each term.
    per_term: HashMap<u32, u32>,
    /// Points holding any term: the collection size of the IDF, as the engine's sparse index counts it.
    points: u64,
}

/// Where the scan is, and when it last failed; held by a write from reading the terms it replaces to
/// changing the counts, and by the scan for each page.
#[derive(Default)]
struct Progress {
    /// The scan has read every point below this id (None: none yet).
    scanned_below: Option<Uuid>,
    failed_at: Option<Instant>,
}

/// Which posting lists a lexical query walks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walk {
    /// Every term's (no term is common, or the counts are not ready yet).
    All,
    /// Only these terms' (the query's rare terms); every term then scores what they found.
    Rare(Vec<u32>),
    /// None: every term is common, so the query only scores the candidates the vector stage found.
    None,
}

/// A write's or a scan page's hold on the counts (see the module comment).
pub struct Hold<'a> {
    counts: &'a TermCounts,
    progress: MutexGuard<'a, Progress>,
}

impl Hold<'_> {
    /// Whether a write of the point `id` must change the counts: once counted, always; while counting, when
    /// the scan has passed it.
    pub fn tracks(&self, id: Uuid) -> bool {
        match self.counts.state.load(Ordering::Acquire) {
            COUNTED => true,
            COUNTING => self.progress.scanned_below.is_some_and(|below| id < below),
            _ => false,
        }
    }

    /// Adds the terms of points the scan read, or of points just written.
    pub fn add<'t>(&self, points: impl IntoIterator<Item = &'t [u32]>) {
        self.replace([], points);
    }

    /// Takes away the terms of points replaced or deleted and adds those of the points written, in one step:
    /// a search never sees the counts between the two.
    pub fn replace<'t>(&self, before: impl IntoIterator<Item = &'t [u32]>, after: impl IntoIterator<Item = &'t [u32]>) {
        let mut counts = self.counts.counts.write().unwrap_or_else(|e| e.into_inner());
        for terms in after {
            counts.points += u64::from(!terms.is_empty());
            for term in terms {
                *counts.per_term.entry(*term).or_default() += 1;
            }
        }
        for terms in before {
            counts.points = counts.points.saturating_sub(u64::from(!terms.is_empty()));
            for term in terms {
                if let Some(n) = counts.per_term.get_mut(term) {
                    *n -= 1;
                    if *n == 0 {
                        counts.per_term.remove(term);
                    }
                }
            }
        }
    }

    /// The scan has read every point below `next`; None: every point, the counts are ready.
    pub fn scanned(&mut self, next: Option<Uuid>) {
        match next {
            Some(next) => self.progress.scanned_below = Some(next),
            None => self.counts.state.store(COUNTED, Ordering::Release),
        }
    }

    /// Gives the scan up after it failed: the counts are dropped, and a search at least `RETRY_AFTER`
    /// later starts another.
    pub fn failed(&mut self) {
        *self.counts.counts.write().unwrap_or_else(|e| e.into_inner()) = Counts::default();
        self.progress.scanned_below = None;
        self.progress.failed_at = Some(Instant::now());
        self.counts.state.store(NOT_COUNTED, Ordering::Release);
    }
}

impl TermCounts {
    /// Claims the scan that counts the terms: true for exactly one caller, the one that must run it (not
    /// within `RETRY_AFTER` of a failed one). Until it has run, every query walks every term.
    pub fn claim_count(&self) -> bool {
        if self.state.load(Ordering::Acquire) != NOT_COUNTED {
            return false;
        }
        let progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if progress.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return false;
        }
        self.state.compare_exchange(NOT_COUNTED, COUNTING, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Holds the counts for one write or one page of the scan.
    pub fn hold(&self) -> Hold<'_> {
        Hold { counts: self, progress: self.progress.lock().unwrap_or_else(|e| e.into_inner()) }
    }

    /// How many points hold `term`, once counted.
    pub fn points_with(&self, term: u32) -> Option<u32> {
        if self.state.load(Ordering::Acquire) != COUNTED {
            return None;
        }
        Some(self.counts.read().unwrap_or_else(|e| e.into_inner()).per_term.get(&term).copied().unwrap_or(0))
    }

    /// Each of `terms`' inverse document frequency, once counted: the engine's `idf` modifier, ln(1 + (N -
    /// df + 0.5) / (df + 0.5)) over the N points that hold any term, df of them holding the term. The
    /// engine's own N and df also count points deleted or replaced in a segment that has not been rebuilt
    /// since, so after deletes and updates the two differ by the share of such points.
    pub fn idf(&self, terms: &[u32]) -> Option<Vec<f32>> {
        if self.state.load(Ordering::Acquire) != COUNTED {
            return None;
        }
        let counts = self.counts.read().unwrap_or_else(|e| e.into_inner());
        let n = counts.points as f32;
        let idf = |term| {
            let df = counts.per_term.get(term).copied().unwrap_or(0) as f32;
            ((n - df + 0.5) / (df + 0.5) + 1.0).ln()
        };
        Some(terms.iter().map(idf).collect())
    }

    /// The walk for a query's `terms`: a term held by more than `common_above` points is common (0: none is).
    pub fn plan(&self, terms: &[u32], common_above: u32) -> Walk {
        if common_above == 0 || self.state.load(Ordering::Acquire) != COUNTED {
            return Walk::All;
        }
        let counts = self.counts.read().unwrap_or_else(|e| e.into_inner());
        let rare: Vec<u32> =
            terms.iter().copied().filter(|t| counts.per_term.get(t).copied().unwrap_or(0) <= common_above).collect();
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
        let id = |n: u128| Uuid::from_u128(n);
        assert!(!counts.hold().tracks(id(1)), "nothing to keep before the scan");
        assert!(counts.claim_count() && !counts.claim_count(), "one scan");
        {
            let mut page = counts.hold();
            assert!(!page.tracks(id(1)), "not scanned yet: the scan reads it");
            page.add(points.iter().map(Vec::as_slice));
            page.scanned(Some(id(50)));
            assert!(page.tracks(id(49)) && !page.tracks(id(50)), "behind the scan, writes count");
        }
        assert_eq!(counts.plan(&[1, 3], 5), Walk::All, "not counted yet");
        assert_eq!((counts.points_with(1), counts.idf(&[1])), (None, None));
        counts.hold().scanned(None);
        assert!(counts.hold().tracks(id(u128::MAX)));
        assert_eq!(counts.points_with(1), Some(10));
        assert_eq!(counts.points_with(9), Some(0));
        assert_eq!(counts.plan(&[1, 3], 5), Walk::Rare(vec![3]));
        assert_eq!(counts.plan(&[3, 9], 5), Walk::All, "an unseen term is rare");
        assert_eq!(counts.plan(&[1, 2], 5), Walk::None);
        assert_eq!(counts.plan(&[1, 2], 10), Walk::All, "at the bound a term is still walked");
        assert_eq!(counts.plan(&[1, 2], 0), Walk::All, "0 walks every term");
        counts.hold().add([[].as_slice()]);
        let idf = |n: f32, df: f32| ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
        assert_eq!(
            counts.idf(&[1, 3, 9]),
            Some(vec![idf(10.0, 10.0), idf(10.0, 2.0), idf(10.0, 0.0)]),
            "N: points with terms"
        );
        counts.hold().replace(points[..6].iter().map(Vec::as_slice), []);
        assert_eq!((counts.points_with(1), counts.points_with(3)), (Some(4), Some(0)));
        assert_eq!(counts.plan(&[1, 2], 5), Walk::All);
        assert_eq!(counts.idf(&[1]), Some(vec![idf(4.0, 4.0)]));
        counts.hold().replace([[3u32].as_slice()], []);
        assert_eq!(counts.points_with(3), Some(0), "never below zero");
        counts.hold().failed();
        assert!(counts.points_with(1).is_none() && counts.idf(&[1]).is_none() && !counts.hold().tracks(id(1)));
        assert!(!counts.claim_count(), "not again right after a failure");
        counts.progress.lock().unwrap().failed_at = Instant::now().checked_sub(RETRY_AFTER);
        assert!(counts.claim_count(), "a failed scan is tried again later");
    }
}
