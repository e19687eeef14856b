//! One conformance suite for the `GraphStore` trait, run unchanged against every implementation: the
//! embedded SQLite store (always) and Neo4j (the server scripts/test starts; ignored without it, so a plain
//! `cargo test` reports those tests as ignored, never as passed).

use std::collections::BTreeSet;
use std::sync::Arc;

use context_store::domain::{AgentState, Context, ReadScope, Relation, Session, Timestamp, Visibility, content_hash};
use context_store::error::StoreError;
use context_store::store::GraphStore;
use context_store::store::graph::neo4j::Neo4jGraphStore;
use context_store::store::graph::sqlite::{SqliteGraphStore, SqliteOptions, Synchronous};
use context_store::store::graph::{InsertOutcome, StateKey};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{neo4j_exclusive, neo4j_settings, public_context, test_settings};
use crate::vector_conformance::{dataset, random_filter, random_vector};

type Store = Arc<dyn GraphStore>;

fn admin() -> ReadScope {
    ReadScope { agent_id: "root".into(), admin: true, sessions: None }
}

fn agent(id: &str) -> ReadScope {
    ReadScope { agent_id: id.into(), admin: false, sessions: None }
}

fn session(id: &str) -> Session {
    Session {
        id: id.into(),
        purpose: format!("purpose of {id}"),
        metadata: json!({"team": "core"}).as_object().unwrap().clone(),
        created_by: "alice".into(),
        created_at: Timestamp::now(),
    }
}

async fn insert(store: &Store, context: &Context) -> i64 {
    match store.insert_context(context, &random_vector(&mut fastrand::Rng::new()), &admin()).await.unwrap() {
        InsertOutcome::Inserted { journal_seq } => journal_seq,
        InsertOutcome::Duplicate(existing) => panic!("unexpected duplicate of {}", existing.id),
    }
}

fn next_version(context: &Context, content: &str) -> Context {
    Context {
        content: content.into(),
        content_hash: content_hash(content),
        version: context.version + 1,
        updated_at: Timestamp::now(),
        ..context.clone()
    }
}

async fn sessions(store: Store) {
    for id in ["b", "a", "c"] {
        store.create_session(&session(id)).await.unwrap();
    }
    assert!(matches!(store.create_session(&session("a")).await, Err(StoreError::Conflict(_))));
    let got = store.get_session("a").await.unwrap().expect("session a");
    assert_eq!((got.purpose.as_str(), got.created_by.as_str()), ("purpose of a", "alice"));
    assert_eq!(got.metadata.get("team"), Some(&json!("core")));
    assert_eq!(store.get_session("missing").await.unwrap(), None);
    let ids = |list: Vec<Session>| list.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_sessions(None, 10, None).await.unwrap()), ["a", "b", "c"]);
    assert_eq!(ids(store.list_sessions(Some("a"), 1, None).await.unwrap()), ["b"]);
    let only = ["c".to_string(), "a".to_string()];
    assert_eq!(ids(store.list_sessions(None, 10, Some(&only)).await.unwrap()), ["a", "c"]);
    assert_eq!(store.counts().await.unwrap().sessions, 3);
}

async fn inserts_dedup_and_journal(store: Store) {
    let orphan = public_context("no session", "nowhere", "alice");
    let missing = store.insert_context(&orphan, &[0.0; 384], &admin()).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
    store.create_session(&session("s")).await.unwrap();
    let mut first = public_context("the same words", "s", "bob");
    first.visibility = Visibility::Private;
    let seq = insert(&store, &first).await;
    // Bob's private context is no duplicate for alice (she may not see it), but it is for bob.
    let again = public_context("the same words", "s", "alice");
    let outcome = store.insert_context(&again, &[0.1; 384], &agent("bob")).await.unwrap();
    assert_eq!(outcome, InsertOutcome::Duplicate(Box::new(first.clone())));
    let outcome = store.insert_context(&again, &[0.1; 384], &agent("alice")).await.unwrap();
    assert!(matches!(outcome, InsertOutcome::Inserted { .. }), "{outcome:?}");
    assert_eq!(store.find_duplicate("s", &first.content_hash, &agent("carol")).await.unwrap(), Some(again.clone()));
    assert_eq!(store.find_duplicate("other", &first.content_hash, &admin()).await.unwrap(), None);

    let pending = store.pending_index(100).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!((pending[0].seq, pending[0].id), (seq, first.id), "oldest first");
    store.clear_pending(&[seq]).await.unwrap();
    assert_eq!(store.pending_index(100).await.unwrap().len(), 1);
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.contexts, counts.pending_index), (2, 1));
    assert_eq!(store.get_context(first.id).await.unwrap(), Some(first));
}

async fn concurrent_inserts_of_one_text_store_it_once(store: Store) {
    store.create_session(&session("s")).await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let context = public_context("raced text", "s", &format!("agent-{i}"));
                store.insert_context(&context, &[0.5; 384], &admin()).await.unwrap()
            })
        })
        .collect();
    let mut inserted = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), InsertOutcome::Inserted { .. }) {
            inserted += 1;
        }
    }
    assert_eq!(inserted, 1);
    assert_eq!(store.counts().await.unwrap().contexts, 1);
}

/// 48 writes at once, a third of them failing (missing session): every failure leaves nothing behind and
/// every success lands, whether the store commits them one by one or in groups.
async fn concurrent_writes_fail_alone(store: Store) {
    store.create_session(&session("s")).await.unwrap();
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let target = if i % 3 == 0 { "missing" } else { "s" };
                let context = public_context(&format!("text {i}"), target, "alice");
                (context.clone(), store.insert_context(&context, &[0.25; 384], &admin()).await)
            })
        })
        .collect();
    let (mut stored, mut refused) = (Vec::new(), 0);
    for task in tasks {
        match task.await.unwrap() {
            (context, Ok(InsertOutcome::Inserted { .. })) => stored.push(context),
            (context, Err(StoreError::NotFound)) => {
                assert_eq!(context.session_id, "missing");
                assert_eq!(store.get_context(context.id).await.unwrap(), None);
                refused += 1;
            }
            (_, other) => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((stored.len(), refused), (32, 16));
    for context in &stored {
        assert_eq!(store.get_context(context.id).await.unwrap().as_ref(), Some(context));
    }
    let counts = store.counts().await.unwrap();
    assert_eq!((counts.contexts, counts.pending_index), (32, 32), "one journal entry per stored context");
}

async fn updates_keep_versions_and_detect_conflicts(store: Store) {
    store.create_session(&session("s")).await.unwrap();
    let mut v1 = public_context("first words", "s", "alice");
    v1.tags = vec!["red".into()];
    v1.metadata = json!({"stage": "draft", "n": 1}).as_object().unwrap().clone();
    insert(&store, &v1).await;
    let mut v2 = next_version(&v1, "second words");
    v2.tags = vec!["blue".into()];
    v2.metadata = json!({"n": 2}).as_object().unwrap().clone();
    let v1_embedding = store.index_entries(&[v1.id]).await.unwrap().remove(0).embedding;
    let (_, previous, previous_embedding) = store.update_context(&v2, &[0.2; 384]).await.unwrap();
    assert_eq!(previous, v1);
    assert_eq!(previous_embedding, v1_embedding);
    let stale = store.update_context(&v2, &[0.2; 384]).await;
    assert!(matches!(stale, Err(StoreError::VersionConflict { expected: 1, current: 2 })), "{stale:?}");
    assert_eq!(store.get_context(v1.id).await.unwrap(), Some(v2.clone()));
    let versions = store.context_versions(v1.id, None, None).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!((versions[0].version, versions[0].content.as_str()), (1, "first words"));
    assert_eq!(versions[0].tags, ["red"]);
    assert_eq!(versions[0].metadata.get("stage"), Some(&json!("draft")));

    // Filters see the new state only: the dropped metadata key and tag no longer match.
    let filter = |args: serde_json::Value| {
        context_store::domain::ContextFilter::parse(serde_json::from_value(args).unwrap(), admin(), Timestamp::now())
            .unwrap()
    };
    let count = |found: Vec<Context>| found.len();
    assert_eq!(
        count(store.list_contexts(&filter(json!({"metadata": {"stage": "draft"}})), None, 10).await.unwrap()),
        0
    );
    assert_eq!(count(store.list_contexts(&filter(json!({"metadata": {"n": 2}})), None, 10).await.unwrap()), 1);
    assert_eq!(count(store.list_contexts(&filter(json!({"tags_any": ["red"]})), None, 10).await.unwrap()), 0);
    assert_eq!(count(store.list_contexts(&filter(json!({"tags_all": ["blue"]})), None, 10).await.unwrap()), 1);

    let (seq, _, v2_embedding) = store.update_context(&next_version(&v2, "third words"), &[0.3; 384]).await.unwrap();
    assert_eq!(v2_embedding, vec![0.2; 384]);
    store.rollback_update(&v2, &v2_embedding).await.unwrap();
    assert_eq!(store.get_context(v1.id).await.unwrap(), Some(v2.clone()));
    let restored = store.index_entries(&[v1.id]).await.unwrap();
    assert_eq!(restored[0].embedding, vec![0.2; 384], "the undone update's embedding does not stay");
    assert_eq!(
        store.context_versions(v1.id, None, None).await.unwrap().len(),
        1,
        "the undone update leaves no version"
    );
    // The undone update's journal entry stays: its vector write may have been applied after all.
    assert!(store.pending_index(100).await.unwrap().iter().any(|p| p.seq == seq && p.id == v1.id));
    let missing = store.update_context(&next_version(&public_context("x", "s", "a"), "y"), &[0.0; 384]).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");

    // Versions page newest first: a limit, and a cursor below a version.
    let mut paged = public_context("paged", "s", "alice");
    insert(&store, &paged).await;
    for words in ["two", "three", "four"] {
        let next = next_version(&paged, words);
        store.update_context(&next, &[0.4; 384]).await.unwrap();
        paged = next;
    }
    let page = |before, limit| store.context_versions(paged.id, before, limit);
    let numbers = |versions: Vec<context_store::domain::ContextVersion>| -> Vec<i64> {
        versions.iter().map(|v| v.version).collect()
    };
    assert_eq!(numbers(page(None, None).await.unwrap()), [3, 2, 1]);
    assert_eq!(numbers(page(None, Some(2)).await.unwrap()), [3, 2]);
    assert_eq!(numbers(page(Some(3), Some(5)).await.unwrap()), [2, 1]);
    assert_eq!(numbers(page(Some(1), None).await.unwrap()), Vec::<i64>::new());
}

async fn concurrent_updates_of_one_version_let_one_win(store: Store) {
    store.create_session(&session("s")).await.unwrap();
    let v1 = public_context("contended", "s", "alice");
    insert(&store, &v1).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, v2) = (store.clone(), next_version(&v1, &format!("writer {i}")));
            tokio::spawn(async move { store.update_context(&v2, &[0.1; 384]).await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::VersionConflict { expected: 1, current: 2 }) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.context_versions(v1.id, None, None).await.unwrap().len(), 1);
}

async fn deletes_hide_roll_back_and_purge(store: Store) {
    store.create_session(&session("s")).await.unwrap();
    let mut kept = public_context("kept", "s", "alice");
    kept.tags = vec!["keep".into()];
    let gone = public_context("gone", "s", "alice");
    insert(&store, &kept).await;
    insert(&store, &gone).await;
    let stale = store.delete_context(gone.id, Some(7)).await;
    assert!(matches!(stale, Err(StoreError::VersionConflict { expected: 7, current: 1 })), "{stale:?}");
    let (seq, deleted) = store.delete_context(gone.id, Some(1)).await.unwrap();
    assert_eq!(deleted, gone);
    assert_eq!(store.get_context(gone.id).await.unwrap(), None);
    assert_eq!(store.get_contexts(&[gone.id, kept.id]).await.unwrap(), vec![kept.clone()]);
    assert!(matches!(store.delete_context(gone.id, None).await, Err(StoreError::NotFound)));
    store.rollback_delete(gone.id).await.unwrap();
    assert!(store.pending_index(100).await.unwrap().iter().any(|p| p.seq == seq), "the entry stays");
    assert_eq!(store.get_context(gone.id).await.unwrap(), Some(gone.clone()));

    // A purge removes nothing of a context that is not deleted (the repair purges every id it settles).
    store.purge_context(kept.id).await.unwrap();
    assert_eq!(store.get_context(kept.id).await.unwrap(), Some(kept.clone()));
    let (seq, _) = store.delete_context(gone.id, None).await.unwrap();
    store.clear_pending(&[seq]).await.unwrap();
    store.purge_context(gone.id).await.unwrap();
    assert_eq!(store.context_versions(gone.id, None, None).await.unwrap(), vec![]);
    assert_eq!(store.counts().await.unwrap().contexts, 1);

    let failed = public_context("vector write failed", "s", "alice");
    let seq = insert(&store, &failed).await;
    store.rollback_insert(failed.id).await.unwrap();
    assert_eq!(store.get_context(failed.id).await.unwrap(), None);
    assert!(store.pending_index(100).await.unwrap().iter().any(|p| p.seq == seq && p.id == failed.id));
    store.clear_pending(&[seq]).await.unwrap();
    // The id is free again: a retried insert succeeds.
    insert(&store, &failed).await;
}

async fn filters_and_cursors_agree_with_the_oracle(store: Store) {
    let mut rng = fastrand::Rng::with_seed(7);
    let now = Timestamp::now();
    for id in ["s0", "s1", "s2"] {
        store.create_session(&session(id)).await.unwrap();
    }
    let points = dataset(&mut rng, now);
    for point in &points {
        store.insert_context(&point.context, &point.vector, &admin()).await.unwrap();
    }
    for round in 0..40 {
        let mut filter = random_filter(&mut rng, now);
        if round % 5 == 0 {
            filter.scope.sessions = Some(vec!["s1".into(), "s2".into()]);
        }
        let mut expected: Vec<Uuid> =
            points.iter().filter(|p| filter.matches(&p.context)).map(|p| p.context.id).collect();
        expected.sort_by(|a, b| b.cmp(a));
        let got: Vec<Uuid> = store.list_contexts(&filter, None, 1000).await.unwrap().iter().map(|c| c.id).collect();
        assert_eq!(got, expected, "round {round}: {filter:?}");
        // Pages of 7 concatenate to the same list.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store.list_contexts(&filter, after, 7).await.unwrap();
            paged.extend(page.iter().map(|c| c.id));
            match page.last() {
                Some(last) if page.len() == 7 => after = Some(last.id),
                _ => break,
            }
        }
        assert_eq!(paged, expected, "round {round}: paged");
    }
    let returned = store.list_contexts(&random_filter(&mut rng, now), None, 1).await.unwrap();
    if let Some(context) = returned.first() {
        let original = points.iter().find(|p| p.context.id == context.id).unwrap();
        assert_eq!(context, &original.context, "every field round-trips");
    }
}

async fn relations_traverse_breadth_first(store: Store) {
    store.create_session(&session("s")).await.unwrap();
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|t| public_context(&format!("node {t}"), "s", "alice"));
    for context in [&a, &b, &c, &d] {
        insert(&store, context).await;
    }
    let link = |from: &Context, to: &Context, relation: &str| Relation {
        from_id: from.id,
        to_id: to.id,
        relation: relation.into(),
        metadata: Default::default(),
        created_at: Timestamp::now(),
        created_by: "alice".into(),
    };
    store.link(&link(&a, &b, "cites")).await.unwrap();
    store.link(&link(&b, &c, "cites")).await.unwrap();
    store.link(&link(&c, &d, "blocks")).await.unwrap();
    store.link(&link(&a, &b, "cites")).await.unwrap(); // replaces, never duplicates
    let ghost = public_context("never stored", "s", "alice");
    assert!(matches!(store.link(&link(&a, &ghost, "cites")).await, Err(StoreError::NotFound)));

    let everything = context_store::domain::ReadScope { admin: true, ..Default::default() };
    let reached = |found: Vec<context_store::store::RelatedContext>| {
        found.into_iter().map(|r| (r.context.content, r.depth, r.relation, r.via)).collect::<Vec<_>>()
    };
    assert_eq!(
        reached(store.related(a.id, 2, None, false, 100, &everything).await.unwrap()),
        [("node b".to_string(), 1, "cites".to_string(), a.id), ("node c".to_string(), 2, "cites".to_string(), b.id)]
    );
    assert_eq!(
        reached(store.related(d.id, 3, None, true, 100, &everything).await.unwrap()),
        [
            ("node c".to_string(), 1, "blocks".to_string(), d.id),
            ("node b".to_string(), 2, "cites".to_string(), c.id),
            ("node a".to_string(), 3, "cites".to_string(), b.id),
        ]
    );
    assert_eq!(store.related(a.id, 3, Some("blocks"), false, 100, &everything).await.unwrap().len(), 0);
    assert_eq!(
        store.related(a.id, 3, None, false, 1, &everything).await.unwrap().len(),
        1,
        "max_nodes bounds the walk"
    );

    let mut around_b: Vec<(Uuid, String)> = store
        .neighbours(&[b.id], 10, &everything)
        .await
        .unwrap()
        .into_iter()
        .map(|(s, r)| (s, r.context.content))
        .collect();
    around_b.sort();
    assert_eq!(around_b, [(b.id, "node a".to_string()), (b.id, "node c".to_string())]);
    assert_eq!(store.neighbours(&[b.id, c.id], 1, &everything).await.unwrap().len(), 2, "per_node bounds each start");
    // Deleted contexts are not reported.
    store.delete_context(c.id, None).await.unwrap();
    assert_eq!(store.neighbours(&[b.id], 10, &everything).await.unwrap().len(), 1);
    assert_eq!(
        reached(store.related(a.id, 3, None, false, 100, &everything).await.unwrap()).len(),
        1,
        "b only: c is deleted, and the walk does not pass through it to d"
    );

    // A context the scope may not see is neither reported nor walked through: a -> hidden -> e.
    let mut hidden = public_context("bob's private hub", "s", "bob");
    hidden.visibility = context_store::domain::Visibility::Private;
    let e = public_context("node e", "s", "alice");
    insert(&store, &hidden).await;
    insert(&store, &e).await;
    store.link(&link(&a, &hidden, "cites")).await.unwrap();
    store.link(&link(&hidden, &e, "cites")).await.unwrap();
    let alice = context_store::domain::ReadScope { agent_id: "alice".into(), admin: false, sessions: None };
    let for_alice = reached(store.related(a.id, 3, None, false, 100, &alice).await.unwrap());
    assert_eq!(
        for_alice,
        [("node b".to_string(), 1, "cites".to_string(), a.id)],
        "neither the hub nor what lies beyond"
    );
    let bob = context_store::domain::ReadScope { agent_id: "bob".into(), admin: false, sessions: None };
    let for_bob = reached(store.related(a.id, 3, None, false, 100, &bob).await.unwrap());
    assert!(for_bob.contains(&("node e".to_string(), 2, "cites".to_string(), hidden.id)), "{for_bob:?}");
    // Hidden neighbours are dropped before the per-node limit: they never crowd visible ones out.
    let around_hub: Vec<String> =
        store.neighbours(&[e.id], 1, &alice).await.unwrap().into_iter().map(|(_, r)| r.context.content).collect();
    assert!(around_hub.is_empty(), "e's only neighbour is the hidden hub: {around_hub:?}");
    // f is made after the hub, so it sorts after it among e's neighbours.
    let f = public_context("node f", "s", "alice");
    insert(&store, &f).await;
    store.link(&link(&e, &f, "cites")).await.unwrap();
    let around_e: Vec<String> =
        store.neighbours(&[e.id], 1, &alice).await.unwrap().into_iter().map(|(_, r)| r.context.content).collect();
    assert_eq!(around_e, ["node f"], "the visible neighbour is found even with per_node 1");

    // Many edges to the same nodes (three relations each) still reach max_nodes distinct nodes.
    let spoke_hub = public_context("spoke hub", "s", "alice");
    insert(&store, &spoke_hub).await;
    for n in 0..8 {
        let spoke = public_context(&format!("spoke {n}"), "s", "alice");
        insert(&store, &spoke).await;
        for relation in ["cites", "blocks", "mentions"] {
            store.link(&link(&spoke_hub, &spoke, relation)).await.unwrap();
        }
    }
    let spokes = store.related(spoke_hub.id, 1, None, false, 5, &everything).await.unwrap();
    let distinct: std::collections::HashSet<Uuid> = spokes.iter().map(|r| r.context.id).collect();
    assert_eq!((spokes.len(), distinct.len()), (5, 5), "five distinct spokes");
}

async fn agent_state_compare_and_set_ttl_and_prefixes(store: Store) {
    let now = Timestamp::now();
    let state = |key: &str, value: serde_json::Value, session: Option<&str>| AgentState {
        agent_id: "alice".into(),
        session_id: session.map(str::to_string),
        key: key.into(),
        value,
        version: 0,
        updated_at: now,
        expires_at: None,
    };
    let key = |k: &str, session: Option<&str>| StateKey {
        agent_id: "alice".into(),
        session_id: session.map(str::to_string),
        key: k.into(),
    };
    assert_eq!(
        store.set_state(&state("plan", json!({"step": 1}), None), Some(0), None).await.unwrap().state.unwrap().version,
        1
    );
    let again = store.set_state(&state("plan", json!(1), None), Some(0), None).await;
    assert!(matches!(again, Err(StoreError::VersionConflict { expected: 0, current: 1 })), "{again:?}");
    assert_eq!(
        store.set_state(&state("plan", json!({"step": 2}), None), None, None).await.unwrap().state.unwrap().version,
        2
    );
    assert_eq!(
        store.set_state(&state("plan", json!({"step": 3}), None), Some(2), None).await.unwrap().state.unwrap().version,
        3
    );
    let got = store.get_state(&key("plan", None)).await.unwrap().expect("stored");
    assert_eq!((got.version, got.value), (3, json!({"step": 3})));
    assert_eq!(store.get_state(&key("plan", Some("s"))).await.unwrap(), None, "sessions keep states apart");

    for k in ["task/1", "task/2", "task/3", "note"] {
        store.set_state(&state(k, json!(k), Some("s")), None, None).await.unwrap();
    }
    let keys = |found: Vec<AgentState>| found.into_iter().map(|s| s.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list_state("alice", Some("s"), "task/", None, 10).await.unwrap()),
        ["task/1", "task/2", "task/3"]
    );
    assert_eq!(keys(store.list_state("alice", Some("s"), "task/", Some("task/1"), 1).await.unwrap()), ["task/2"]);
    assert_eq!(keys(store.list_state("alice", None, "", None, 10).await.unwrap()), ["plan"]);
    assert_eq!(keys(store.list_state("bob", Some("s"), "", None, 10).await.unwrap()), Vec::<String>::new());

    let mut expired = state("flash", json!(true), None);
    expired.expires_at = Some(Timestamp(now.millis() - 1));
    store.set_state(&expired, None, None).await.unwrap();
    assert_eq!(store.get_state(&key("flash", None)).await.unwrap(), None);
    assert_eq!(
        store.set_state(&state("flash", json!(false), None), Some(0), None).await.unwrap().state.unwrap().version,
        1,
        "expired = absent"
    );

    assert!(matches!(store.delete_state(&key("nothing", None), None).await, Err(StoreError::NotFound)));
    let stale = store.delete_state(&key("plan", None), Some(1)).await;
    assert!(matches!(stale, Err(StoreError::VersionConflict { expected: 1, current: 3 })), "{stale:?}");
    store.delete_state(&key("plan", None), Some(3)).await.unwrap();
    assert_eq!(store.get_state(&key("plan", None)).await.unwrap(), None);
    assert_eq!(store.counts().await.unwrap().agent_states, 5);
}

async fn agent_state_embeddings_are_journaled_under_their_point(store: Store) {
    store.create_session(&session("s")).await.unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    let entry = |key: &str, session: Option<&str>| AgentState {
        agent_id: "alice".into(),
        session_id: session.map(str::to_string),
        key: key.into(),
        value: json!({"decision": key}),
        version: 0,
        updated_at: Timestamp::now(),
        expires_at: None,
    };
    let mut written = Vec::new();
    for (i, session) in [None, Some("s"), None, Some("s"), None].into_iter().enumerate() {
        let state = entry(&format!("k{i}"), session);
        let embedding = random_vector(&mut rng);
        let write = store.set_state(&state, None, Some(&embedding)).await.unwrap();
        assert_eq!(write.point_id, StateKey::of(&state).point_id(), "the point is named by the key");
        let pending: Vec<_> = store.pending_index(10_000).await.unwrap();
        assert!(pending.iter().any(|p| p.seq == write.journal_seq && p.id == write.point_id), "journaled");
        written.push((write.state.unwrap(), write.point_id, embedding));
    }
    let ids: Vec<Uuid> = written.iter().map(|w| w.1).collect();
    let entries = store.state_index_entries(&ids).await.unwrap();
    assert_eq!(entries.len(), 5);
    for (state, point_id, embedding) in &written {
        let found = entries.iter().find(|e| e.point_id == *point_id).expect("entry by point id");
        assert_eq!(&found.state, state);
        let drift = found.embedding.iter().zip(embedding).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(drift < 1e-6, "embedding round-trips, drift {drift}");
    }

    // A value that no longer carries text drops its embedding; a delete journals the point.
    let (first, first_id, _) = &written[0];
    store.set_state(&AgentState { value: json!(7), ..first.clone() }, None, None).await.unwrap();
    let (second, second_id, _) = &written[1];
    let deleted = store.delete_state(&StateKey::of(second), None).await.unwrap();
    assert_eq!((deleted.state, deleted.point_id), (None, *second_id));
    assert!(store.pending_index(10_000).await.unwrap().iter().any(|p| p.seq == deleted.journal_seq));
    let left = store.state_index_entries(&ids).await.unwrap();
    assert_eq!(left.len(), 3);
    assert!(!left.iter().any(|e| e.point_id == *first_id || e.point_id == *second_id));

    let mut scanned = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan_state_index(after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.point_id);
        scanned.extend(page.into_iter().map(|e| e.point_id));
    }
    let mut expected: Vec<Uuid> = left.iter().map(|e| e.point_id).collect();
    expected.sort();
    assert_eq!(scanned, expected, "the scan pages through every embedded entry in point id order");
}

async fn index_entries_carry_embeddings_in_id_order(store: Store) {
    store.create_session(&session("s")).await.unwrap();
    let mut rng = fastrand::Rng::with_seed(3);
    let mut stored = Vec::new();
    for i in 0..25 {
        let context = public_context(&format!("indexed {i}"), "s", "alice");
        let embedding = random_vector(&mut rng);
        store.insert_context(&context, &embedding, &admin()).await.unwrap();
        stored.push((context, embedding));
    }
    store.delete_context(stored[3].0.id, None).await.unwrap();
    let entries = store.index_entries(&[stored[0].0.id, stored[3].0.id]).await.unwrap();
    assert_eq!(entries.len(), 1, "deleted contexts have no index entry");
    assert_eq!(entries[0].context, stored[0].0);
    let drift = entries[0].embedding.iter().zip(&stored[0].1).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(drift < 1e-6, "embedding round-trips, drift {drift}");

    let mut scanned = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan_index_entries(after, 10).await.unwrap();
        after = page.last().map(|e| e.context.id);
        scanned.extend(page.into_iter().map(|e| e.context.id));
        if after.is_none() {
            break;
        }
    }
    let expected: Vec<Uuid> = stored
        .iter()
        .map(|(c, _)| c.id)
        .filter(|id| *id != stored[3].0.id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(scanned, expected);
    store.ping().await.unwrap();
}

async fn expired_items_are_found_and_purged(store: Store) {
    store.create_session(&session("s")).await.unwrap();
    let now = Timestamp::now();
    let mut past = public_context("expired", "s", "alice");
    past.expires_at = Some(Timestamp(now.millis() - 1000));
    let mut future = public_context("not yet", "s", "alice");
    future.expires_at = Some(Timestamp(now.millis() + 60_000));
    let forever = public_context("forever", "s", "alice");
    for context in [&past, &future, &forever] {
        insert(&store, context).await;
    }
    assert_eq!(store.expired_contexts(now, 10).await.unwrap(), vec![past.id]);
    store.delete_context(past.id, None).await.unwrap();
    assert_eq!(
        store.expired_contexts(now, 10).await.unwrap(),
        Vec::<Uuid>::new(),
        "deleted ones are not reported again"
    );

    let state = |key: &str, expires_at: Option<i64>| AgentState {
        agent_id: "alice".into(),
        session_id: None,
        key: key.into(),
        value: json!(key),
        version: 0,
        updated_at: now,
        expires_at: expires_at.map(Timestamp),
    };
    for (key, expires) in [("old-1", Some(now.millis() - 5)), ("old-2", Some(now.millis() - 1)), ("new", None)] {
        store.set_state(&state(key, expires), None, None).await.unwrap();
    }
    assert_eq!(store.purge_expired_state(now, 1).await.unwrap().len(), 1, "the limit bounds one pass");
    let purged = store.purge_expired_state(now, 10).await.unwrap();
    assert_eq!(purged.len(), 1);
    let pending: Vec<_> = store.pending_index(1000).await.unwrap().into_iter().map(|p| p.id).collect();
    assert!(pending.contains(&purged[0].id), "a purge journals the entry's point");
    assert_eq!(store.purge_expired_state(now, 10).await.unwrap().len(), 0);
    assert_eq!(store.counts().await.unwrap().agent_states, 1);
}

async fn export_scans_and_version_import(store: Store) {
    store.create_session(&session("s")).await.unwrap();
    let [a, b, c] = ["a", "b", "c"].map(|t| public_context(&format!("export {t}"), "s", "alice"));
    for context in [&a, &b, &c] {
        insert(&store, context).await;
    }
    let relation = Relation {
        from_id: a.id,
        to_id: b.id,
        relation: "cites".into(),
        metadata: json!({"why": "because"}).as_object().unwrap().clone(),
        created_at: Timestamp(1_700_000_000_123),
        created_by: "alice".into(),
    };
    store.link(&relation).await.unwrap();
    store.link(&Relation { from_id: c.id, to_id: a.id, relation: "blocks".into(), ..relation.clone() }).await.unwrap();
    assert_eq!(store.relations_from(&[a.id, b.id]).await.unwrap(), vec![relation.clone()]);
    assert_eq!(store.relations_from(&[c.id]).await.unwrap().len(), 1);

    let state = |agent: &str, session: Option<&str>, key: &str| AgentState {
        agent_id: agent.into(),
        session_id: session.map(str::to_string),
        key: key.into(),
        value: json!([agent, key]),
        version: 0,
        updated_at: Timestamp::now(),
        expires_at: None,
    };
    for (agent, session, key) in
        [("bob", None, "k"), ("alice", Some("s"), "b"), ("alice", None, "z"), ("alice", Some("s"), "a")]
    {
        store.set_state(&state(agent, session, key), None, None).await.unwrap();
    }
    let mut scanned = Vec::new();
    let mut after: Option<StateKey> = None;
    loop {
        let page = store.scan_states(after.as_ref(), 3).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(StateKey {
            agent_id: last.agent_id.clone(),
            session_id: last.session_id.clone(),
            key: last.key.clone(),
        });
        scanned.extend(page.into_iter().map(|s| (s.agent_id, s.session_id, s.key)));
    }
    let expected = [("alice", None, "z"), ("alice", Some("s"), "a"), ("alice", Some("s"), "b"), ("bob", None, "k")]
        .map(|(a, s, k)| (a.to_string(), s.map(str::to_string), k.to_string()));
    assert_eq!(scanned, expected, "ordered by agent, session ('' first), key");

    let versions = vec![
        context_store::domain::ContextVersion {
            id: a.id,
            version: 2,
            context_type: "note".into(),
            content: "the second draft".into(),
            tags: vec!["x".into()],
            metadata: json!({"n": 2}).as_object().unwrap().clone(),
            visibility: Visibility::Public,
            updated_at: Timestamp(1_700_000_000_002),
        },
        context_store::domain::ContextVersion {
            id: a.id,
            version: 1,
            context_type: "note".into(),
            content: "the first draft".into(),
            tags: vec![],
            metadata: Default::default(),
            visibility: Visibility::Private,
            updated_at: Timestamp(1_700_000_000_001),
        },
    ];
    store.import_versions(a.id, &versions).await.unwrap();
    store.import_versions(a.id, &versions).await.unwrap(); // idempotent
    assert_eq!(store.context_versions(a.id, None, None).await.unwrap(), versions);
}

/// API keys where the store keeps them (Neo4j: in the graph; SQLite: the data dir's `keys.sqlite3`):
/// created, verified, listed and revoked, and of racers for the first key exactly one creates it.
async fn api_keys(store: Store) {
    use context_store::auth::{KeyStore, NewKey, Permissions};
    let dir = tempfile::tempdir().unwrap();
    let keys = match store.shared_keys() {
        Some(backend) => KeyStore::new(backend),
        None => KeyStore::sqlite(dir.path()).unwrap(),
    };
    let admin = NewKey {
        agent_id: "admin".into(),
        agent_type: "admin".into(),
        permissions: Permissions::all(),
        sessions: None,
    };
    let racers = (0..8).map(|_| keys.create_first(&admin));
    let created: Vec<_> = futures::future::join_all(racers).await.into_iter().filter_map(Result::unwrap).collect();
    assert_eq!(created.len(), 1, "one first key, not one per racer");
    let (first, first_key) = &created[0];
    assert_eq!(keys.verify(first_key).await.unwrap().as_ref(), Some(first));

    let reader = NewKey {
        agent_id: "reader".into(),
        agent_type: "test".into(),
        permissions: Permissions::parse("read").unwrap(),
        sessions: Some(vec!["s1".into(), "s2".into()]),
    };
    let (record, key) = keys.create(&reader).await.unwrap();
    let verified = keys.verify(&key).await.unwrap().expect("the new key verifies");
    assert_eq!((verified.permissions, verified.sessions.clone()), (reader.permissions, reader.sessions.clone()));
    let forged = format!("{}x", &key[..key.len() - 1]);
    assert!(keys.verify(&forged).await.unwrap().is_none(), "a wrong secret does not verify");
    assert!(keys.verify("cs_nosuchkey_secret").await.unwrap().is_none());
    assert_eq!(keys.active(&record.key_id).await.unwrap().map(|k| k.agent_id), Some("reader".into()));
    let listed: Vec<String> = keys.list().await.unwrap().into_iter().map(|k| k.key_id).collect();
    assert_eq!(listed, vec![first.key_id.clone(), record.key_id.clone()], "oldest first");

    keys.revoke(&record.key_id).await.unwrap();
    assert!(keys.verify(&key).await.unwrap().is_none(), "a revoked key does not verify");
    assert!(keys.active(&record.key_id).await.unwrap().is_none());
    assert!(keys.list().await.unwrap().iter().any(|k| k.key_id == record.key_id && k.revoked));
    assert!(matches!(keys.revoke("nosuchkey").await, Err(StoreError::NotFound)));
    assert!(keys.create_first(&admin).await.unwrap().is_none(), "the first key is still active");
}

/// Each suite function runs against SQLite (in a temp dir) and against the test Neo4j (emptied first).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = SqliteGraphStore::open(&SqliteOptions {
                        path: dir.path().join("graph.sqlite3"),
                        readers: 4,
                        synchronous: Synchronous::Normal,
                    })
                    .unwrap();
                    super::$name(Arc::new(store)).await;
                }
            )*
            use super::*;
        }
        mod neo4j {
            $(
                #[tokio::test]
                #[ignore = "needs Neo4j: scripts/test starts one and runs this"]
                async fn $name() {
                    let _exclusive = neo4j_exclusive().await;
                    let mut settings = test_settings(std::path::Path::new("/nonexistent"));
                    neo4j_settings(&mut settings);
                    let store = Neo4jGraphStore::connect(&settings.graph.neo4j.options()).await.unwrap();
                    super::$name(Arc::new(store)).await;
                }
            )*
            use super::*;
        }
    };
}

conformance!(
    sessions,
    inserts_dedup_and_journal,
    concurrent_inserts_of_one_text_store_it_once,
    concurrent_writes_fail_alone,
    updates_keep_versions_and_detect_conflicts,
    concurrent_updates_of_one_version_let_one_win,
    deletes_hide_roll_back_and_purge,
    filters_and_cursors_agree_with_the_oracle,
    relations_traverse_breadth_first,
    agent_state_compare_and_set_ttl_and_prefixes,
    agent_state_embeddings_are_journaled_under_their_point,
    index_entries_carry_embeddings_in_id_order,
    expired_items_are_found_and_purged,
    export_scans_and_version_import,
    api_keys,
);
