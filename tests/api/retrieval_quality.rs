//! The retrieval-quality regression test: the committed fixture (30 LongMemEval questions, the sessions they
//! point into and 79 other questions' sessions pooled in as distractors, 1 272 turns,
//! `tests/fixtures/retrieval/`, made by `benchmarks/retrieval/prepare.py`) is stored through the service, and
//! the full pipeline must find at least as many answers in its first 10 hits as each single stage.

use context_store::bench::retrieval::{RetrievalSet, evaluate, load_into, modes};

use crate::helpers::{TestCore, checkout};

#[tokio::test]
async fn on_the_committed_fixture_the_pipeline_does_at_least_as_well_as_each_single_stage() {
    let app = TestCore::start().await;
    let set = RetrievalSet::load(&checkout().join("tests/fixtures/retrieval/conversational.jsonl")).unwrap();
    assert_eq!((set.contexts.len(), set.queries.len()), (1272, 30));
    let ids = load_into(app.service(), &set).await.unwrap();
    let report = evaluate(app.service(), &set, &ids, &modes()).await.unwrap();
    eprintln!("{}", report.markdown());
    let pipeline = report.row("pipeline", "all").unwrap();
    for single in ["dense", "lexical"] {
        let other = report.row(single, "all").unwrap();
        assert!(
            pipeline.contexts.recall_10 >= other.contexts.recall_10,
            "pipeline {:?} against {single} {:?}",
            pipeline.contexts,
            other.contexts
        );
    }
    let typos = report.row("pipeline", "all+typos").unwrap();
    assert!(typos.contexts.recall_10 >= pipeline.contexts.recall_10 - 0.1, "typos cost little: {typos:?}");
}
