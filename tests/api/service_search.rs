use std::sync::atomic::Ordering;

use context_store::domain::{ContextFilterArgs, Visibility};
use context_store::service::{SearchMode, SearchRequest, Stage, StoreContextRequest};

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
    assert_eq!(result.hits.len(), 5, "the index page was short (5 of 30 candidates match) and was filled exactly");
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
async fn search_falls_back_to_lexical_and_fuzzy_when_the_embedder_is_down() {
    let app = TestCore::start().await;
    seed(&app).await;
    app.embedder.failing.store(true, Ordering::SeqCst);
    let result =
        app.service().search(&app.principal, search("kubernetes cluster memory", Some("s1"), "bob")).await.unwrap();
    assert_eq!(result.mode, SearchMode::LexicalFuzzy);
    assert_eq!(result.stages, [Stage::Lexical, Stage::Fuzzy]);
    assert!(result.degraded_reason.is_some());
    assert!(result.hits[0].context.content.contains("Kubernetes"));
    assert_eq!(result.hits[0].scores.vector, 0.0);
    assert_eq!(result.hits[0].scores.lexical, Some(1.0), "the best lexical match");
    // A misspelt word no lexical term matches is still found: the prefiltered set is scanned too.
    let typo = app.service().search(&app.principal, search("guitarrist sollo", Some("s1"), "bob")).await.unwrap();
    assert!(typo.hits[0].context.content.contains("guitarist"), "{:?}", typo.hits[0].context.content);
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
    // Longer than a summary carries, in two-byte characters so a cut between bytes would show.
    let long_answer = format!("The backup disk is full on weekends; rotate old snapshots.{}", " été".repeat(200));
    let answer = app.store("s1", "alice", &long_answer).await;
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
    let summary = &hit.related[0];
    assert!(summary.truncated && summary.content.chars().count() == 500, "a summary carries 500 characters");
    assert!(long_answer.starts_with(&summary.content));
    let answer_hit = result.hits.iter().find(|h| h.context.id == answer.context.id).expect("answer found");
    assert_eq!(answer_hit.related[0].id, question.context.id.to_string(), "links are followed both ways");
    assert!(!answer_hit.related[0].truncated && answer_hit.related[0].content == question.context.content);
}

mod recall_statistics {
    use context_store::auth::{Permissions, Principal};
    use context_store::domain::{ContextFilterArgs, Visibility};
    use context_store::error::ErrorCode;
    use context_store::service::{
        ContextList, DeleteContextRequest, GetContextRequest, ListContextsRequest, ListOrder, SearchRequest,
        StoreContextRequest,
    };

    use crate::helpers::TestCore;

    fn read(id: uuid::Uuid) -> GetContextRequest {
        GetContextRequest {
            id: id.to_string(),
            include_versions: false,
            versions_limit: None,
            versions_before: None,
            agent_id: None,
        }
    }

    fn listed(sort: ListOrder, limit: usize, cursor: Option<String>) -> ListContextsRequest {
        ListContextsRequest {
            filter: ContextFilterArgs { session_id: Some("stats".into()), ..Default::default() },
            limit: Some(limit),
            cursor,
            sort,
            agent_id: None,
        }
    }

    fn counts(list: &ContextList) -> Vec<(String, u64)> {
        list.contexts.iter().map(|c| (c.content.clone(), list.recall[&c.id.to_string()].count)).collect()
    }

    #[tokio::test]
    async fn reads_and_search_hits_are_counted_listed_in_order_and_weighed_on_request() {
        let app = TestCore::start().await;
        app.session("stats").await;
        let service = app.service();
        let texts = ["the deploy checklist for friday", "notes from the design review", "the on-call rota for march"];
        let mut ids = Vec::new();
        for text in texts {
            ids.push(app.store("stats", "alice", text).await.context.id);
        }
        let private = StoreContextRequest {
            session_id: "stats".into(),
            content: "alice's private reminder about the rota".into(),
            agent_id: Some("alice".into()),
            visibility: Some(Visibility::Private),
            ..Default::default()
        };
        let private = service.store_context(&app.principal, private).await.unwrap().context.id;

        for _ in 0..3 {
            service.get_context(&app.principal, read(ids[1])).await.unwrap();
        }
        service.get_context(&app.principal, read(ids[0])).await.unwrap();
        let as_author = GetContextRequest { agent_id: Some("alice".into()), ..read(private) };
        service.get_context(&app.principal, as_author).await.unwrap();
        // The maintenance loop flushes every 200 ms here and may have written some of these already; this
        // flush returns once those are in the graph too.
        service.flush_recalls().await.unwrap();
        let first = service.list_contexts(&app.principal, listed(ListOrder::MostRecalled, 10, None)).await.unwrap();
        assert_eq!(
            counts(&first)[..2],
            [(texts[1].to_string(), 3), (texts[0].to_string(), 1)],
            "most recalled first, only recalled contexts"
        );
        assert_eq!(first.contexts.len(), 2, "neither the never-read context nor alice's private one");
        assert!(first.recall[&ids[1].to_string()].last_recalled_at.is_some());

        // A search counts each hit it returns, cached or not.
        let search = SearchRequest {
            query: "who is on call in march".into(),
            filter: ContextFilterArgs { session_id: Some("stats".into()), ..Default::default() },
            limit: Some(1),
            ..Default::default()
        };
        for _ in 0..2 {
            let found = service.search(&app.principal, search.clone()).await.unwrap();
            assert_eq!(found.hits[0].context.id, ids[2]);
            assert!(found.hits[0].scores.recall.is_none(), "no recall score unless weighed");
        }
        service.flush_recalls().await.unwrap();
        let latest = service.list_contexts(&app.principal, listed(ListOrder::LastRecalled, 1, None)).await.unwrap();
        assert_eq!(counts(&latest), [(texts[2].to_string(), 2)], "the last recalled first");
        let next = service
            .list_contexts(&app.principal, listed(ListOrder::LastRecalled, 1, latest.next_cursor.clone()))
            .await
            .unwrap();
        assert_eq!(next.contexts.len(), 1);
        assert_ne!(next.contexts[0].id, ids[2], "the cursor pages on");

        // Scope: only alice sees her private context and its statistics.
        let bob = Principal {
            agent_id: "bob".into(),
            agent_type: "agent".into(),
            permissions: Permissions { read: true, write: true, query: false, admin: false },
            sessions: None,
            trusted: false,
        };
        let seen_by_bob = service.list_contexts(&bob, listed(ListOrder::MostRecalled, 10, None)).await.unwrap();
        assert!(seen_by_bob.contexts.iter().all(|c| c.id != private));
        assert!(!seen_by_bob.recall.contains_key(&private.to_string()));
        let as_alice =
            ListContextsRequest { agent_id: Some("alice".into()), ..listed(ListOrder::MostRecalled, 10, None) };
        assert!(
            service.list_contexts(&app.principal, as_alice).await.unwrap().contexts.iter().any(|c| c.id == private)
        );

        // Weighed by recall alone, the most recalled context wins whatever the query says.
        let weighed = SearchRequest {
            query: "who is on call in march".into(),
            recall_weight: Some(1.0),
            limit: Some(3),
            filter: ContextFilterArgs { session_id: Some("stats".into()), ..Default::default() },
            ..Default::default()
        };
        let found = service.search(&app.principal, weighed).await.unwrap();
        assert_eq!(found.hits[0].context.id, ids[1], "3 reads beat 2 search hits");
        let scores = &found.hits[0].scores;
        assert!((scores.recall.unwrap() - (1.0 - 0.9f64.powi(3))).abs() < 1e-9, "{scores:?}");
        assert!((scores.final_score - scores.recall.unwrap()).abs() < 1e-9);
        assert!(scores.recency.is_some() && scores.recency.unwrap() > 0.99, "just used");

        // A deleted context leaves the statistics with it.
        let delete =
            DeleteContextRequest { id: ids[1].to_string(), expected_version: None, agent_id: Some("alice".into()) };
        service.delete_context(&app.principal, delete).await.unwrap();
        service.flush_recalls().await.unwrap();
        let after = service.list_contexts(&app.principal, listed(ListOrder::MostRecalled, 10, None)).await.unwrap();
        assert!(after.contexts.iter().all(|c| c.id != ids[1]));
        assert!(service.graph().recall_stats(&[ids[1]]).await.unwrap().is_empty());

        for bad in [
            SearchRequest { recency_weight: Some(0.6), recall_weight: Some(0.6), ..search.clone() },
            SearchRequest { recall_weight: Some(-0.1), ..search.clone() },
        ] {
            assert_eq!(service.search(&app.principal, bad).await.unwrap_err().code(), ErrorCode::InvalidArgument);
        }
        for cursor in ["r:x", "r:99999", "0193"] {
            let bad = listed(ListOrder::MostRecalled, 1, Some(cursor.into()));
            assert_eq!(
                service.list_contexts(&app.principal, bad).await.unwrap_err().code(),
                ErrorCode::InvalidArgument
            );
        }
    }
}

#[tokio::test]
async fn a_failing_lexical_stage_leaves_a_ranked_answer_that_says_so_and_is_not_cached() {
    let app = TestCore::start().await;
    seed(&app).await;
    app.vectors.failing_lexical.store(true, Ordering::SeqCst);
    let ask = || search("forgot my password", Some("s1"), "bob");
    let first = app.service().search(&app.principal, ask()).await.expect("the search still answers");
    assert_eq!(first.stages, [Stage::Vector, Stage::Fuzzy], "ranked without the lexical stage");
    assert_eq!(first.mode, SearchMode::Hybrid);
    assert!(first.hits[0].context.content.contains("password"));
    let reason = first.degraded_reason.as_deref().unwrap_or_default();
    assert!(reason.contains("lexical stage failed"), "{reason}");
    assert!(!reason.contains("switched off by the test"), "the backend's own message stays in the log: {reason}");
    assert_eq!(app.service().metrics().search_stage_failures.get(), 1);
    let again = app.service().search(&app.principal, ask()).await.unwrap();
    assert!(!again.cached, "an answer without a stage is not cached");
    // Once the stage works again the full answer comes back (and that one is cached).
    app.vectors.failing_lexical.store(false, Ordering::SeqCst);
    let healed = app.service().search(&app.principal, ask()).await.unwrap();
    assert_eq!(healed.stages, [Stage::Vector, Stage::Lexical, Stage::Fuzzy]);
    assert!(healed.degraded_reason.is_none());
    assert!(app.service().search(&app.principal, ask()).await.unwrap().cached);
    // Asked for the lexical stage alone, a failure falls back to the prefiltered scan, ranked by the fuzzy stage.
    app.vectors.failing_lexical.store(true, Ordering::SeqCst);
    let alone =
        SearchRequest { stages: Some(vec![Stage::Lexical, Stage::Fuzzy]), ..search("password", Some("s1"), "bob") };
    let alone = app.service().search(&app.principal, alone).await.unwrap();
    assert!(alone.hits[0].context.content.contains("password"));
    assert!(alone.degraded_reason.is_some());
}

#[tokio::test]
async fn each_stage_can_be_turned_off_and_the_lexical_stage_finds_rare_words() {
    let app = TestCore::start().await;
    seed(&app).await;
    app.store("s1", "alice", "Ticket QX-7731 tracks the flaky checkout test on the release branch.").await;
    let ask = |query: &str, stages: Option<Vec<Stage>>| SearchRequest { stages, ..search(query, Some("s1"), "bob") };

    let lexical = app.service().search(&app.principal, ask("QX-7731", Some(vec![Stage::Lexical]))).await.unwrap();
    assert_eq!(lexical.stages, [Stage::Lexical]);
    assert_eq!(lexical.hits.len(), 1, "only texts sharing a term with the query");
    assert!(lexical.hits[0].context.content.contains("QX-7731"));
    let scores = &lexical.hits[0].scores;
    assert_eq!((scores.vector, scores.fuzzy, scores.lexical), (0.0, 0.0, Some(1.0)));
    assert_eq!(scores.final_score, 1.0);

    let full = app.service().search(&app.principal, ask("what is ticket QX-7731 about", None)).await.unwrap();
    assert_eq!(full.stages, [Stage::Vector, Stage::Lexical, Stage::Fuzzy]);
    assert!(full.hits[0].context.content.contains("QX-7731"));
    let top = &full.hits[0].scores;
    assert!(top.vector > 0.0 && top.lexical == Some(1.0) && top.fuzzy > 0.0, "{top:?}");
    assert!(full.hits.iter().skip(1).all(|h| h.scores.lexical.is_some()), "every hit carries a lexical score");

    let dense = app.service().search(&app.principal, ask("forgot my login", Some(vec![Stage::Vector]))).await.unwrap();
    assert_eq!(dense.stages, [Stage::Vector]);
    assert!(dense.hits[0].context.content.contains("password"));
    assert!(dense.hits.iter().all(|h| h.scores.lexical.is_none() && h.scores.fuzzy == 0.0));
    assert_eq!(dense.hits[0].scores.final_score, dense.hits[0].scores.vector);

    let fuzzy = app.service().search(&app.principal, ask("guitarist solo", Some(vec![Stage::Fuzzy]))).await.unwrap();
    assert!(fuzzy.hits[0].context.content.contains("guitarist"));
    assert_eq!(fuzzy.hits[0].scores.vector, 0.0);

    let none = app.service().search(&app.principal, ask("x", Some(vec![]))).await.unwrap_err();
    assert_eq!(none.code(), context_store::error::ErrorCode::InvalidArgument);
}
