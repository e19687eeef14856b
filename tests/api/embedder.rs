use std::sync::Arc;

use context_store::embed::fastembed::Precision;
use context_store::embed::{Embedder, FastEmbedder};
use context_store::metrics::Metrics;

use crate::helpers::{model, test_settings};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum()
}

const REFERENCE_PAIRS: [(&str, &str, f64); 3] = [
    ("A man is playing a guitar on stage.", "A musician performs a song with his guitar.", 0.648426),
    ("How do I reset my password?", "I forgot my login credentials and need to change them.", 0.634062),
    ("The weather is lovely today.", "It is sunny and warm outside this afternoon.", 0.712817),
];

/// A model at the given precision, loaded for one test (the shared `model()` runs the configured default).
fn model_at(precision: Precision) -> FastEmbedder {
    let mut settings = test_settings(std::path::Path::new("/nonexistent"));
    settings.embedding.precision = precision;
    FastEmbedder::start(&settings.model_assets(), settings.batcher_options(), Arc::new(Metrics::new()))
        .expect("embedding assets are installed: run scripts/setup")
}

async fn reference_cosines_within(model: &dyn Embedder, tolerance: f64) {
    for (left, right, expected) in REFERENCE_PAIRS {
        let vectors = model.embed(vec![left.into(), right.into()]).await.unwrap();
        assert_eq!(vectors[0].len(), 384);
        let norm = cosine(&vectors[0], &vectors[0]);
        assert!((norm - 1.0).abs() < 1e-4, "vectors are L2-normalised, got |v|^2 = {norm}");
        let got = cosine(&vectors[0], &vectors[1]);
        assert!((got - expected).abs() < tolerance, "{left} / {right}: {got} vs {expected}");
    }
}

#[tokio::test]
async fn the_fp32_graph_matches_sentence_transformers_reference_cosines() {
    reference_cosines_within(&model_at(Precision::Fp32), 1e-4).await;
}

#[tokio::test]
async fn the_int8_graph_stays_near_the_references_and_the_fp32_embeddings() {
    let int8 = model_at(Precision::Int8);
    reference_cosines_within(&int8, 0.02).await;
    let texts: Vec<String> = [
        "Ticket QX-7731 tracks the flaky checkout test on the release branch.",
        "I adopted a rescue greyhound named Biscuit last spring.",
        "what did we decide about the database migration last week",
        "Lunch options near the office include ramen and tacos.",
    ]
    .map(String::from)
    .to_vec();
    let quantized = int8.embed(texts.clone()).await.unwrap();
    let full = model_at(Precision::Fp32).embed(texts).await.unwrap();
    for (a, b) in quantized.iter().zip(&full) {
        let agreement = cosine(a, b);
        assert!(agreement > 0.98 && agreement < 1.0 - 1e-6, "int8 against fp32: {agreement}");
    }
}

#[tokio::test]
async fn the_service_runs_the_configured_precision() {
    assert_eq!(test_settings(std::path::Path::new("/x")).embedding.precision, Precision::Int8, "the default");
    let texts = vec!["The weather is lovely today.".to_string()];
    let shared = model().embed(texts.clone()).await.unwrap();
    let int8 = model_at(Precision::Int8).embed(texts).await.unwrap();
    assert!(cosine(&shared[0], &int8[0]) > 1.0 - 1e-6, "the shared test model is the int8 graph");
}

#[tokio::test]
async fn batched_and_concurrent_embeddings_equal_single_ones() {
    let texts: Vec<String> = (0..24).map(|i| format!("sentence number {i} about topic {}", i % 5)).collect();
    let batch = model().embed(texts.clone()).await.unwrap();
    let singles = futures::future::join_all(texts.iter().map(|t| {
        let t = t.clone();
        async move { model().embed(vec![t]).await.unwrap().remove(0) }
    }))
    .await;
    for (a, b) in batch.iter().zip(&singles) {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "batched and single embeddings differ by {diff}");
    }
}
