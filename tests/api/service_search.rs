use std::sync::atomic::Ordering;

use context_store::domain::{ContextFilterArgs, Visibility};
use context_store::service::{SearchMode, SearchRequest, StoreContextRequest};

use crate::helpers::TestCore;

fn search(query: &str, session: Option<&str>, agent: &str) -> SearchRequest {
    SearchRequest {
        query: query.into(),
        filter: ContextFilterArgs { session_id: session.map(str::to_string), ..Default::default() },
        agent_id: Some(agent.into()),
        limit: Some(5),
        ..Default::default()
    }
}

async fn seed(app: &TestCore) {
    app.session("s1").await;
    app.session("s2").await;
    for text in [
        "How do I reset my password if I forgot it?",
        "The quarterly sales report is due on Friday.",
        "Our Kubernetes cluster ran out of memory during the deploy.",
        "Lunch options near the office include ramen and tacos.",
        "The guitarist played a wonderful solo at the concert.",
    ] {
        app.store("s1", "alice", text).await;
    }
    app.store("s2", "alice", "Password resets for the staging environment are handled by ops.").await;
}

#[tokio::test]
async fn search_ranks_the_semantically_closest_context_first_with_a_score_breakdown() {
    let app = TestCore::start().await;
    seed(&app).await;
    let result = app
        .service()
        .search(&app.principal, search("I can't remember my login credentials", Some("s1"), "bob"))
        .await
        .unwrap();
    assert_eq!(result.mode, SearchMode::Hybrid);
    assert_eq!(result.hits[0].context.content, "How do I reset my password if I forgot it?");
    let scores = &result.hits[0].scores;
    assert!(scores.vector > 0.3 && scores.vector <= 1.0);
    assert!((0.0..=1.0).contains(&scores.fuzzy));
    assert!(result.hits.windows(2).all(|w| w[0].scores.final_score >= w[1].scores.final_score));
    assert!(result.hits.iter().all(|h| h.context.session_id == "s1"), "prefilter keeps other sessions out");
    assert_eq!(result.hits.len(), 5, "the index page was short (5 of 40 candidates match) and was filled exactly");
    assert_eq!(app.service().metrics().search_exact_fallbacks.get(), 1);

    let thresholded = app
        .service()
        .search(
            &app.principal,
            SearchRequest { fuzzy_threshold: Some(0.99), ..search("kubernetes memory", Some("s1"), "bob") },
        )
        .await
        .unwrap();
    assert_eq!(thresholded.hits.len(), 1);
    assert!(thresholded.hits[0].context.content.contains("Kubernetes"));
}

#[tokio::test]
async fn search_never_returns_another_agents_private_context_even_for_its_exact_text() {
    let app = TestCore::start().await;
    app.session("s1").await;
    let secret = "The launch code for project falcon is 7741";
    for (agent, visibility) in [("alice", Visibility::Private), ("root", Visibility::AdminOnly)] {
        app.service()
            .store_context(
                &app.principal,
                StoreContextRequest {
                    session_id: "s1".into(),
                    content: format!("{secret} ({agent})"),
                    visibility: Some(visibility),
                    agent_id: Some(agent.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    app.store("s1", "alice", "Project falcon launches next spring").await;
    let as_bob = app.service().search(&app.principal, search(secret, None, "bob")).await.unwrap();
    assert!(as_bob.hits.iter().all(|h| !h.context.content.contains("7741")), "{:?}", as_bob.hits);
    assert!(!as_bob.hits.is_empty(), "public contexts are still found");
    let as_alice = app.service().search(&app.principal, search(secret, None, "alice")).await.unwrap();
    assert!(as_alice.hits.iter().any(|h| h.context.content.contains("(alice)")));
    assert!(as_alice.hits.iter().all(|h| !h.context.content.contains("(root)")));
}

#[tokio::test]
async fn search_results_are_cached_until_a_write() {
    let app = TestCore::start().await;
    seed(&app).await;
    let first = app.service().search(&app.principal, search("concert solo", Some("s1"), "bob")).await.unwrap();
    assert!(!first.cached);
    let second = app.service().search(&app.principal, search("concert solo", Some("s1"), "bob")).await.unwrap();
    assert!(second.cached);
    assert_eq!(first.hits[0].context.id, second.hits[0].context.id);
    let new = app.store("s1", "alice", "The drummer's solo stole the concert").await;
    let third = app.service().search(&app.principal, search("concert solo", Some("s1"), "bob")).await.unwrap();
    assert!(!third.cached, "a write invalidates cached results");
    assert!(third.hits.iter().any(|h| h.context.id == new.context.id));
}

#[tokio::test]
async fn search_falls_back_to_fuzzy_only_when_the_embedder_is_down() {
    let app = TestCore::start().await;
    seed(&app).await;
    app.embedder.failing.store(true, Ordering::SeqCst);
    let result =
        app.service().search(&app.principal, search("kubernetes cluster memory", Some("s1"), "bob")).await.unwrap();
    assert_eq!(result.mode, SearchMode::FuzzyOnly);
    assert!(result.degraded_reason.is_some());
    assert!(result.hits[0].context.content.contains("Kubernetes"));
    assert_eq!(result.hits[0].scores.vector, 0.0);
    app.embedder.failing.store(false, Ordering::SeqCst);
    let healthy =
        app.service().search(&app.principal, search("kubernetes cluster memory", Some("s1"), "bob")).await.unwrap();
    assert_eq!(healthy.mode, SearchMode::Hybrid);
}

#[tokio::test]
async fn bad_search_arguments_are_invalid() {
    let app = TestCore::start().await;
    for request in [
        search("", None, "bob"),
        SearchRequest { limit: Some(0), ..search("q", None, "bob") },
        SearchRequest { fuzzy_threshold: Some(1.5), ..search("q", None, "bob") },
        SearchRequest { candidates: Some(5000), ..search("q", None, "bob") },
        SearchRequest { query: "x".repeat(3000), ..search("q", None, "bob") },
    ] {
        let err = app.service().search(&app.principal, request).await.unwrap_err();
        assert_eq!(err.code(), context_store::error::ErrorCode::InvalidArgument, "{err}");
    }
}

#[tokio::test]
async fn expanded_search_hits_carry_their_visible_related_contexts() {
    let app = TestCore::start().await;
    app.session("s1").await;
    let question = app.store("s1", "alice", "Why does the nightly backup job fail on Sundays?").await;
    let answer = app.store("s1", "alice", "The backup disk is full on weekends; rotate old snapshots").await;
    let hidden = app
        .service()
        .store_context(
            &app.principal,
            StoreContextRequest {
                session_id: "s1".into(),
                content: "alice's private musing about backups".into(),
                visibility: Some(Visibility::Private),
                agent_id: Some("alice".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for (to, relation) in [(&answer.context.id, "answered_by"), (&hidden.context.id, "noted_in")] {
        app.service()
            .link_contexts(
                &app.principal,
                context_store::service::LinkContextsRequest {
                    from_id: question.context.id.to_string(),
                    to_id: to.to_string(),
                    relation: relation.into(),
                    agent_id: Some("alice".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let result = app
        .service()
        .search(
            &app.principal,
            SearchRequest { expand_related: true, ..search("nightly backup failing on sunday", Some("s1"), "bob") },
        )
        .await
        .unwrap();
    let hit = result.hits.iter().find(|h| h.context.id == question.context.id).expect("question found");
    let related: Vec<&str> = hit.related.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(related, vec![answer.context.id.to_string().as_str()], "bob sees the answer, not alice's private note");
    let answer_hit = result.hits.iter().find(|h| h.context.id == answer.context.id).expect("answer found");
    assert_eq!(answer_hit.related[0].id, question.context.id.to_string(), "links are followed both ways");
}
