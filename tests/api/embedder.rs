use crate::helpers::model;

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum()
}

#[tokio::test]
async fn embeddings_match_sentence_transformers_reference_cosines() {
    let pairs = [
        ("A man is playing a guitar on stage.", "A musician performs a song with his guitar.", 0.648426),
        ("How do I reset my password?", "I forgot my login credentials and need to change them.", 0.634062),
        ("The weather is lovely today.", "It is sunny and warm outside this afternoon.", 0.712817),
    ];
    for (left, right, expected) in pairs {
        let vectors = model().embed(vec![left.into(), right.into()]).await.unwrap();
        assert_eq!(vectors[0].len(), 384);
        let norm = cosine(&vectors[0], &vectors[0]);
        assert!((norm - 1.0).abs() < 1e-4, "vectors are L2-normalised, got |v|^2 = {norm}");
        let got = cosine(&vectors[0], &vectors[1]);
        assert!((got - expected).abs() < 1e-4, "{left} / {right}: {got} vs {expected}");
    }
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
