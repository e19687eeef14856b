use context_store::domain::{ContextFilterArgs, Visibility};
use context_store::error::ErrorCode;
use context_store::service::{
    DeleteContextRequest, GetRelatedRequest, LinkContextsRequest, ListContextsRequest, StoreContextRequest,
    UpdateContextRequest,
};
use serde_json::json;

use crate::helpers::TestCore;

#[tokio::test]
async fn stored_context_round_trips_with_every_field() {
    let app = TestCore::start().await;
    app.session("s1").await;
    let stored = app
        .service()
        .store_context(
            &app.principal,
            StoreContextRequest {
                session_id: "s1".into(),
                content: "Use exponential backoff for the payment API".into(),
                context_type: Some("decision".into()),
                tags: Some(vec!["Payments".into(), "retry".into()]),
                metadata: Some(json!({"priority": 2, "team": "core"}).as_object().unwrap().clone()),
                visibility: Some(Visibility::Public),
                agent_id: Some("alice".into()),
                ttl_seconds: Some(3600),
            },
        )
        .await
        .unwrap();
    assert!(!stored.deduplicated);
    let got = app.get(stored.context.id).await.unwrap();
    assert_eq!(got.context, stored.context);
    assert_eq!(got.context.tags, vec!["payments", "retry"]);
    assert_eq!(got.context.version, 1);
    assert!(got.context.expires_at.is_some());
}

#[tokio::test]
async fn storing_into_a_missing_session_is_not_found_and_changes_nothing() {
    let app = TestCore::start().await;
    let err = app
        .service()
        .store_context(
            &app.principal,
            StoreContextRequest { session_id: "nope".into(), content: "x".into(), ..Default::default() },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    let counts = app.service().graph().counts().await.unwrap();
    assert_eq!(counts.contexts, 0);
    assert_eq!(counts.pending_index, 0);
    assert_eq!(app.service().vectors().count().await.unwrap(), 0);
}

#[tokio::test]
async fn bad_input_gets_a_stable_code_and_changes_nothing() {
    let app = TestCore::start().await;
    app.session("s1").await;
    let base = StoreContextRequest { session_id: "s1".into(), content: "valid".into(), ..Default::default() };
    let cases: Vec<(StoreContextRequest, ErrorCode)> = vec![
        (StoreContextRequest { content: "   ".into(), ..base.clone() }, ErrorCode::InvalidArgument),
        (StoreContextRequest { content: "x".repeat(70_000), ..base.clone() }, ErrorCode::PayloadTooLarge),
        (StoreContextRequest { session_id: "bad id".into(), ..base.clone() }, ErrorCode::InvalidArgument),
        (StoreContextRequest { tags: Some(vec!["".into()]), ..base.clone() }, ErrorCode::InvalidArgument),
        (
            StoreContextRequest { tags: Some((0..40).map(|i| i.to_string()).collect()), ..base.clone() },
            ErrorCode::InvalidArgument,
        ),
        (
            StoreContextRequest { context_type: Some("no spaces allowed".into()), ..base.clone() },
            ErrorCode::InvalidArgument,
        ),
        (StoreContextRequest { ttl_seconds: Some(0), ..base.clone() }, ErrorCode::InvalidArgument),
        (StoreContextRequest { agent_id: Some("".into()), ..base.clone() }, ErrorCode::InvalidArgument),
        (
            StoreContextRequest {
                metadata: Some(json!({"big": "y".repeat(20_000)}).as_object().unwrap().clone()),
                ..base.clone()
            },
            ErrorCode::PayloadTooLarge,
        ),
    ];
    for (request, code) in cases {
        let err = app.service().store_context(&app.principal, request).await.unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    }
    assert_eq!(app.service().graph().counts().await.unwrap().contexts, 0);
    assert_eq!(app.service().vectors().count().await.unwrap(), 0);
}

#[tokio::test]
async fn identical_content_in_a_session_is_deduplicated_but_never_reveals_hidden_items() {
    let app = TestCore::start().await;
    app.session("s1").await;
    app.session("s2").await;
    let first = app.store("s1", "alice", "The build cache lives in /var/cache/build").await;
    let again = app.store("s1", "bob", "The build cache lives in /var/cache/build").await;
    assert!(again.deduplicated);
    assert_eq!(again.context.id, first.context.id);
    let other_session = app.store("s2", "alice", "The build cache lives in /var/cache/build").await;
    assert!(!other_session.deduplicated);

    let private = app
        .service()
        .store_context(
            &app.principal,
            StoreContextRequest {
                session_id: "s1".into(),
                content: "alice's private note".into(),
                visibility: Some(Visibility::Private),
                agent_id: Some("alice".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let bobs = app.store("s1", "bob", "alice's private note").await;
    assert!(!bobs.deduplicated, "bob must not be handed alice's private context");
    assert_ne!(bobs.context.id, private.context.id);
}

#[tokio::test]
async fn update_keeps_previous_versions_and_rejects_stale_versions() {
    let app = TestCore::start().await;
    app.session("s1").await;
    let stored = app.store("s1", "alice", "first draft of the plan").await;
    let id = stored.context.id.to_string();
    let edit = |content: &str, expected_version: Option<i64>, agent: &str| {
        let request = UpdateContextRequest {
            id: id.clone(),
            expected_version,
            content: Some(content.into()),
            agent_id: Some(agent.into()),
            ..Default::default()
        };
        app.service().update_context(&app.principal, request)
    };
    let updated = edit("second draft of the plan", Some(1), "alice").await.unwrap();
    assert_eq!(updated.version, 2);
    let stale = edit("lost update", Some(1), "alice").await.unwrap_err();
    assert_eq!(stale.code(), ErrorCode::Conflict);
    let got = app.get(&id).await.unwrap();
    assert_eq!(got.context.content, "second draft of the plan");
    assert_eq!(got.versions.len(), 1);
    assert_eq!(got.versions[0].content, "first draft of the plan");

    let not_author = edit("hijack", None, "mallory").await.unwrap_err();
    assert_eq!(not_author.code(), ErrorCode::PermissionDenied);

    // Previous versions come a page at a time, newest first, however many there are.
    for n in 3..=25 {
        edit(&format!("draft {n} of the plan"), None, "alice").await.unwrap();
    }
    let page = |limit, before| {
        let request = context_store::service::GetContextRequest {
            id: id.clone(),
            include_versions: true,
            versions_limit: limit,
            versions_before: before,
            agent_id: None,
        };
        app.service().get_context(&app.principal, request)
    };
    let numbers = |got: &context_store::service::GetContextResponse| -> Vec<i64> {
        got.versions.iter().map(|v| v.version).collect()
    };
    let first = page(None, None).await.unwrap();
    assert_eq!(numbers(&first), (5..=24).rev().collect::<Vec<i64>>(), "20 by default, newest first");
    assert_eq!(first.versions_next, Some(5));
    let rest = page(Some(100), first.versions_next).await.unwrap();
    assert_eq!((numbers(&rest), rest.versions_next), (vec![4, 3, 2, 1], None));
    let exact = page(Some(4), Some(5)).await.unwrap();
    assert_eq!((exact.versions.len(), exact.versions_next), (4, None), "a full last page has no next");
    for limit in [0, 101] {
        assert_eq!(page(Some(limit), None).await.unwrap_err().code(), ErrorCode::InvalidArgument);
    }
}

#[tokio::test]
async fn deleted_contexts_are_gone_from_graph_and_vectors() {
    let app = TestCore::start().await;
    app.session("s1").await;
    let stored = app.store("s1", "alice", "temporary scratch note").await;
    let id = stored.context.id;
    let stale = app
        .service()
        .delete_context(
            &app.principal,
            DeleteContextRequest { id: id.to_string(), expected_version: Some(7), agent_id: Some("alice".into()) },
        )
        .await
        .unwrap_err();
    assert_eq!(stale.code(), ErrorCode::Conflict);
    app.service()
        .delete_context(
            &app.principal,
            DeleteContextRequest { id: id.to_string(), expected_version: Some(1), agent_id: Some("alice".into()) },
        )
        .await
        .unwrap();
    let err = app.get(id).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(app.service().vectors().existing_ids(&[id]).await.unwrap().is_empty());
}

#[tokio::test]
async fn list_pages_through_filtered_contexts_without_repeats() {
    let app = TestCore::start().await;
    app.session("s1").await;
    app.session("s2").await;
    for i in 0..25 {
        let tags = if i % 2 == 0 { vec!["even".to_string()] } else { vec!["odd".to_string()] };
        app.service()
            .store_context(
                &app.principal,
                StoreContextRequest {
                    session_id: "s1".into(),
                    content: format!("item number {i}"),
                    tags: Some(tags),
                    metadata: Some(
                        json!({"index": i, "kind": if i < 5 { "early" } else { "late" }}).as_object().unwrap().clone(),
                    ),
                    agent_id: Some(if i % 3 == 0 { "alice" } else { "bob" }.into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    app.store("s2", "alice", "another session's item").await;

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = app
            .service()
            .list_contexts(
                &app.principal,
                ListContextsRequest {
                    filter: ContextFilterArgs { session_id: Some("s1".into()), ..Default::default() },
                    limit: Some(10),
                    cursor: cursor.clone(),
                    agent_id: None,
                    sort: Default::default(),
                },
            )
            .await
            .unwrap();
        seen.extend(page.contexts.iter().map(|c| c.id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 25);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");

    let filtered = app
        .service()
        .list_contexts(
            &app.principal,
            ListContextsRequest {
                filter: ContextFilterArgs {
                    session_id: Some("s1".into()),
                    tags_all: Some(vec!["even".into()]),
                    agent_ids: Some(vec!["alice".into()]),
                    metadata: Some(json!({"kind": "late"}).as_object().unwrap().clone()),
                    ..Default::default()
                },
                limit: Some(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Even, authored by alice (i % 3 == 0), index >= 5: 6, 12, 18, 24.
    let mut contents: Vec<String> = filtered.contexts.iter().map(|c| c.content.clone()).collect();
    contents.sort();
    assert_eq!(contents, vec!["item number 12", "item number 18", "item number 24", "item number 6"]);
}

#[tokio::test]
async fn related_contexts_follow_links_to_bounded_depth() {
    let app = TestCore::start().await;
    app.session("s1").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.store("s1", "alice", &format!("step {i} of the chain")).await.context.id.to_string());
    }
    for pair in ids.windows(2) {
        app.service()
            .link_contexts(
                &app.principal,
                LinkContextsRequest {
                    from_id: pair[0].clone(),
                    to_id: pair[1].clone(),
                    relation: "next".into(),
                    agent_id: Some("alice".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    let related = |depth: u32, limit: usize, cursor: Option<String>| {
        app.service().get_related(
            &app.principal,
            GetRelatedRequest {
                id: ids[0].clone(),
                depth: Some(depth),
                limit: Some(limit),
                cursor,
                ..Default::default()
            },
        )
    };
    assert_eq!(related(1, 20, None).await.unwrap().related.len(), 1);
    let three = related(3, 20, None).await.unwrap();
    assert_eq!(three.related.iter().map(|r| r.depth).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(three.related[2].context.id.to_string(), ids[3]);
    let first_page = related(3, 2, None).await.unwrap();
    assert_eq!(first_page.related.len(), 2);
    let second_page = related(3, 2, first_page.next_cursor).await.unwrap();
    assert_eq!(second_page.related.len(), 1);
    assert!(second_page.next_cursor.is_none());
    assert_eq!(related(4, 20, None).await.unwrap_err().code(), ErrorCode::InvalidArgument);

    let missing = app
        .service()
        .link_contexts(
            &app.principal,
            LinkContextsRequest {
                from_id: ids[0].clone(),
                to_id: uuid::Uuid::now_v7().to_string(),
                relation: "next".into(),
                agent_id: Some("alice".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(missing.code(), ErrorCode::NotFound);
}
