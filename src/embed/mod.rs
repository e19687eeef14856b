//! Embeddings: the `Embedder` trait, the fastembed implementation (session pool + micro-batcher), and a
//! moka cache in front of any embedder.

pub mod cache;
pub mod fastembed;

use async_trait::async_trait;

use crate::error::StoreResult;

#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// Length of every vector this embedder returns.
    fn dimension(&self) -> usize;
    /// One L2-normalised vector per text, in order. Fails with `Unavailable` when the model cannot run.
    async fn embed(&self, texts: Vec<String>) -> StoreResult<Vec<Vec<f32>>>;
    /// Runs the model itself once (never a cache): the readiness check.
    async fn probe(&self) -> StoreResult<()> {
        let vectors = self.embed(vec!["readiness probe".to_string()]).await?;
        match vectors.first() {
            Some(vector) if vector.len() == self.dimension() => Ok(()),
            _ => Err(crate::error::StoreError::Unavailable("the embedder returned no usable vector".into())),
        }
    }
}

pub use cache::CachedEmbedder;
pub use fastembed::{FastEmbedder, ModelAssets};
