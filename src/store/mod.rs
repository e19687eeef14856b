//! Backends behind one trait per role: `GraphStore` (source of truth) and `VectorStore` (semantic recall).
//! Each trait has one conformance suite (tests/) that every implementation passes.

pub mod breaker;
pub mod graph;
pub mod lanes;
pub mod vector;

pub use graph::{GraphStore, IndexEntry, InsertOutcome, PendingIndex, PoolStatus, RelatedContext, StoreCounts};
pub use vector::{VectorHit, VectorPoint, VectorStore};
