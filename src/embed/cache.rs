//! A moka cache in front of an embedder, keyed by the sha256 of the exact text (a text can be 64 KiB; its
//! digest keeps every entry near the size of its vector). Hits and misses are counted.

use std::sync::Arc;

use async_trait::async_trait;
use moka::future::Cache;
use sha2::{Digest, Sha256};

use super::Embedder;
use crate::error::StoreResult;
use crate::metrics::Metrics;

pub struct CachedEmbedder {
    inner: Arc<dyn Embedder>,
    cache: Cache<[u8; 32], Arc<Vec<f32>>>,
    metrics: Arc<Metrics>,
}

impl CachedEmbedder {
    pub fn new(inner: Arc<dyn Embedder>, max_entries: u64, metrics: Arc<Metrics>) -> Self {
        Self { inner, cache: Cache::new(max_entries), metrics }
    }
}

#[async_trait]
impl Embedder for CachedEmbedder {
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    /// Past the cache: a dead model must not look alive because its answer to the probe text is cached.
    async fn probe(&self) -> StoreResult<()> {
        self.inner.probe().await
    }

    async fn embed(&self, texts: Vec<String>) -> StoreResult<Vec<Vec<f32>>> {
        let mut vectors: Vec<Option<Vec<f32>>> = Vec::with_capacity(texts.len());
        let mut missing = Vec::new();
        let keys: Vec<[u8; 32]> = texts.iter().map(|text| Sha256::digest(text.as_bytes()).into()).collect();
        for (index, key) in keys.iter().enumerate() {
            match self.cache.get(key).await {
                Some(vector) => {
                    self.metrics.embed_cache_hits.inc();
                    vectors.push(Some(vector.as_ref().clone()));
                }
                None => {
                    self.metrics.embed_cache_misses.inc();
                    vectors.push(None);
                    missing.push(index);
                }
            }
        }
        if !missing.is_empty() {
            let computed = self.inner.embed(missing.iter().map(|&i| texts[i].clone()).collect()).await?;
            for (index, vector) in missing.into_iter().zip(computed) {
                self.cache.insert(keys[index], Arc::new(vector.clone())).await;
                vectors[index] = Some(vector);
            }
        }
        Ok(vectors.into_iter().map(|v| v.expect("every text was embedded")).collect())
    }
}
