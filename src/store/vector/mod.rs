//! The vector store: one point per context (id = context id), payload = the context's filterable fields
//! and its text, so search needs no graph round trip.

pub mod collection;
pub mod edge;
pub mod filter;
pub mod lexical;
pub mod payload;
pub mod qdrant;
pub mod state_points;
pub mod term_counts;

use std::collections::HashSet;

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::{Context, ContextFilter};
use crate::error::StoreResult;

pub use collection::{ClusterSpec, CollectionSpec, LexicalSpec};

#[derive(Debug, Clone, PartialEq)]
pub struct VectorPoint {
    pub context: Context,
    pub vector: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    pub context: Context,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// A hit of the lexical stage.
#[derive(Debug, Clone, PartialEq)]
pub struct LexicalHit {
    pub context: Context,
    /// The BM25 score: the sum over matching terms of IDF x the term's weight in the text (unbounded).
    pub score: f32,
    /// The point's dense vector, when asked for (to score a hit the vector stage did not find).
    pub dense: Option<Vec<f32>>,
}

/// The lexical stage's hits beside a pool of candidates already in hand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LexicalHits {
    /// Hits outside the pool, in full.
    pub hits: Vec<LexicalHit>,
    /// Hits on points of the pool: their ids and BM25 scores.
    pub known: Vec<(Uuid, f32)>,
}

#[async_trait]
pub trait VectorStore: Send + Sync + 'static {
    /// The backend's name in health reports.
    fn backend(&self) -> &'static str;
    /// Inserts or replaces points; returns once they are visible to searches.
    async fn upsert(&self, points: Vec<VectorPoint>) -> StoreResult<()>;
    async fn delete(&self, ids: &[Uuid]) -> StoreResult<()>;
    /// The `limit` nearest points that pass `filter`; `exact` bypasses the HNSW index.
    async fn search(
        &self,
        vector: Vec<f32>,
        filter: &ContextFilter,
        limit: usize,
        exact: bool,
    ) -> StoreResult<Vec<VectorHit>>;
    /// The `limit` points that pass `filter` with the best BM25 score for `query` (only points sharing a
    /// term with it), with their dense vectors when `with_dense`; None when the collection has no lexical
    /// index (made before there was one: `reindex --recreate` adds it). The embedded store leaves common
    /// terms out of the walk (`term_counts`): the best among the points its rare terms find.
    async fn lexical_search(
        &self,
        query: &str,
        filter: &ContextFilter,
        limit: usize,
        with_dense: bool,
    ) -> StoreResult<Option<Vec<LexicalHit>>>;
    /// `lexical_search` beside candidates already in hand: a hit on an id in `known` comes back as its id
    /// and score, without its payload or vector being read. The default reads every hit in full.
    async fn lexical_search_beside(
        &self,
        query: &str,
        filter: &ContextFilter,
        limit: usize,
        with_dense: bool,
        known: &HashSet<Uuid>,
    ) -> StoreResult<Option<LexicalHits>> {
        let hits = self.lexical_search(query, filter, limit, with_dense).await?;
        Ok(hits.map(|hits| {
            let (known, hits): (Vec<LexicalHit>, Vec<LexicalHit>) =
                hits.into_iter().partition(|hit| known.contains(&hit.context.id));
            LexicalHits { hits, known: known.into_iter().map(|hit| (hit.context.id, hit.score)).collect() }
        }))
    }
    /// Up to `limit` points that pass `filter`, in no particular order (fuzzy-only fallback).
    async fn scroll(&self, filter: &ContextFilter, limit: usize) -> StoreResult<Vec<Context>>;
    /// Which of `ids` have a point.
    async fn existing_ids(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>>;
    async fn count(&self) -> StoreResult<u64>;
    /// Points covered by the vector index (the rest are searched exactly).
    async fn indexed(&self) -> StoreResult<u64>;
    /// Makes every applied change durable.
    async fn flush(&self) -> StoreResult<()>;
    /// Builds indexes if worthwhile; may take minutes. Returns whether anything changed.
    async fn optimize(&self) -> StoreResult<bool>;
    /// Starts, in the background, what makes searches cheaper (the embedded store counts its lexical
    /// terms); for a process about to serve searches. The default does nothing.
    fn prepare_search(&self) {}
}

/// How an approximate search was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchPath {
    /// The HNSW search filled the page.
    Approximate,
    /// The HNSW search came back short and the same search was run exactly.
    ExactFallback,
}

/// The `limit` nearest points that pass `filter`, through the HNSW index, with one safeguard: an index search
/// that returns fewer than `limit` hits is run again exactly. A filtered HNSW search only walks links between
/// points that pass the filter, and an unlucky build leaves some of those islands cut off: the search then
/// ends with one or two hits while hundreds of points match (seen in `tests/api/recall.rs`, 1 hit of 1 500
/// matching; Qdrant reports the same in qdrant/qdrant#3094). A short page also happens when fewer than
/// `limit` points match at all; the exact search then scores only those few points through the payload index.
pub async fn search_filled(
    store: &dyn VectorStore,
    vector: Vec<f32>,
    filter: &ContextFilter,
    limit: usize,
) -> StoreResult<(Vec<VectorHit>, SearchPath)> {
    let hits = store.search(vector.clone(), filter, limit, false).await?;
    if hits.len() >= limit {
        return Ok((hits, SearchPath::Approximate));
    }
    Ok((store.search(vector, filter, limit, true).await?, SearchPath::ExactFallback))
}
