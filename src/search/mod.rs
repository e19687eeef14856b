//! The search pipeline's pure stages: text normalisation and fuzzy rerank. The orchestration (prefilter ->
//! vector stage -> rerank -> optional graph expansion) lives in `service`.

pub mod rerank;
