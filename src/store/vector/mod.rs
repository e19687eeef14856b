//! The vector store: one point per context (id = context id), payload = the context's filterable fields
//! and its text, so search needs no graph round trip.

pub mod collection;
pub mod edge;
pub mod filter;
pub mod payload;
pub mod qdrant;

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::{Context, ContextFilter};
use crate::error::StoreResult;

pub use collection::CollectionSpec;

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
}
