use context_store::error::ErrorCode;
use context_store::service::{AgentStateKeyRequest, ListAgentStateRequest, SetAgentStateRequest};
use serde_json::json;

use crate::helpers::TestCore;

fn set(key: &str, value: serde_json::Value, expected: Option<i64>) -> SetAgentStateRequest {
    SetAgentStateRequest {
        key: key.into(),
        value,
        session_id: None,
        expected_version: expected,
        ttl_seconds: None,
        agent_id: Some("alice".into()),
    }
}

fn key(key: &str) -> AgentStateKeyRequest {
    AgentStateKeyRequest { key: key.into(), session_id: None, expected_version: None, agent_id: Some("alice".into()) }
}

#[tokio::test]
async fn agent_state_supports_compare_and_set_prefix_listing_and_delete() {
    let app = TestCore::start().await;
    let service = app.service();
    let created = service.set_agent_state(&app.principal, set("plan/step", json!({"n": 1}), Some(0))).await.unwrap();
    assert_eq!(created.state.version, 1);
    let again = service.set_agent_state(&app.principal, set("plan/step", json!({"n": 2}), Some(0))).await.unwrap_err();
    assert_eq!(again.code(), ErrorCode::Conflict);
    let second = service.set_agent_state(&app.principal, set("plan/step", json!({"n": 2}), Some(1))).await.unwrap();
    assert_eq!(second.state.version, 2);
    let got = service.get_agent_state(&app.principal, key("plan/step")).await.unwrap();
    assert_eq!(got.state.value, json!({"n": 2}));

    for i in 0..5 {
        service.set_agent_state(&app.principal, set(&format!("plan/item-{i}"), json!(i), None)).await.unwrap();
    }
    service.set_agent_state(&app.principal, set("notes", json!("x"), None)).await.unwrap();
    let page = service
        .list_agent_state(
            &app.principal,
            ListAgentStateRequest {
                prefix: Some("plan/".into()),
                limit: Some(4),
                agent_id: Some("alice".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.states.len(), 4);
    let rest = service
        .list_agent_state(
            &app.principal,
            ListAgentStateRequest {
                prefix: Some("plan/".into()),
                limit: Some(4),
                cursor: page.next_cursor,
                agent_id: Some("alice".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(rest.states.len(), 2);
    assert!(rest.next_cursor.is_none());

    let other_agent = service
        .get_agent_state(&app.principal, AgentStateKeyRequest { agent_id: Some("bob".into()), ..key("plan/step") })
        .await
        .unwrap_err();
    assert_eq!(other_agent.code(), ErrorCode::NotFound, "state belongs to its agent");

    let stale_delete = service
        .delete_agent_state(&app.principal, AgentStateKeyRequest { expected_version: Some(1), ..key("plan/step") })
        .await
        .unwrap_err();
    assert_eq!(stale_delete.code(), ErrorCode::Conflict);
    service.delete_agent_state(&app.principal, key("plan/step")).await.unwrap();
    assert_eq!(
        service.get_agent_state(&app.principal, key("plan/step")).await.unwrap_err().code(),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn agent_state_expires_after_its_ttl() {
    let app = TestCore::start().await;
    let request = SetAgentStateRequest { ttl_seconds: Some(1), ..set("lease", json!("held"), None) };
    app.service().set_agent_state(&app.principal, request).await.unwrap();
    assert!(app.service().get_agent_state(&app.principal, key("lease")).await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let err = app.service().get_agent_state(&app.principal, key("lease")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
}

#[tokio::test]
async fn oversized_state_values_are_rejected() {
    let app = TestCore::start().await;
    let err =
        app.service().set_agent_state(&app.principal, set("big", json!("z".repeat(70_000)), None)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::PayloadTooLarge);
    assert_eq!(app.service().graph().counts().await.unwrap().agent_states, 0);
}

#[tokio::test]
async fn the_expiry_pass_removes_expired_contexts_and_state_from_both_stores() {
    use context_store::domain::Timestamp;
    use context_store::service::StoreContextRequest;
    let app = TestCore::start().await;
    app.session("ttl").await;
    let short = |text: &str| StoreContextRequest {
        session_id: "ttl".into(),
        content: text.into(),
        ttl_seconds: Some(60),
        ..Default::default()
    };
    let doomed = app.service().store_context(&app.principal, short("a short-lived note")).await.unwrap();
    let kept = app.store("ttl", "tester", "a note that stays").await;
    let lease = SetAgentStateRequest { ttl_seconds: Some(60), ..set("lease", json!("held"), None) };
    app.service().set_agent_state(&app.principal, lease).await.unwrap();
    app.service().set_agent_state(&app.principal, set("plan", json!(1), None)).await.unwrap();

    let nothing_yet = app.service().expire(Timestamp::now()).await.unwrap();
    assert_eq!((nothing_yet.contexts, nothing_yet.agent_states), (0, 0));
    // Two minutes from now both TTLs have passed.
    let later = Timestamp(Timestamp::now().millis() + 120_000);
    let expired = app.service().expire(later).await.unwrap();
    assert_eq!((expired.contexts, expired.agent_states), (1, 1));
    let doomed_id = doomed.context.id;
    assert!(app.service().graph().get_context(doomed_id).await.unwrap().is_none());
    assert!(app.service().vectors().existing_ids(&[doomed_id]).await.unwrap().is_empty(), "its vector is gone");
    assert_eq!(app.service().vectors().existing_ids(&[kept.context.id]).await.unwrap(), vec![kept.context.id]);
    let counts = app.service().graph().counts().await.unwrap();
    assert_eq!((counts.contexts, counts.agent_states), (1, 1));
    assert_eq!(app.service().expire(later).await.unwrap().contexts, 0, "a second pass finds nothing");
}

mod recall {
    use std::sync::atomic::Ordering;

    use context_store::auth::{Permissions, Principal};
    use context_store::error::ErrorCode;
    use context_store::service::{
        AgentStateKeyRequest, RecallAgentStateRequest, RecallAgentStateResponse, SearchMode, SetAgentStateRequest,
    };
    use context_store::store::graph::StateKey;
    use serde_json::{Value, json};

    use crate::helpers::TestCore;

    /// A caller that is its own agent only, optionally limited to some sessions.
    fn agent(name: &str, sessions: Option<&[&str]>) -> Principal {
        Principal {
            agent_id: name.into(),
            agent_type: "agent".into(),
            permissions: Permissions { read: true, write: true, query: false, admin: false },
            sessions: sessions.map(|s| s.iter().map(|s| s.to_string()).collect()),
            trusted: false,
        }
    }

    fn entry(key: &str, value: Value, session: Option<&str>) -> SetAgentStateRequest {
        SetAgentStateRequest {
            key: key.into(),
            value,
            session_id: session.map(str::to_string),
            expected_version: None,
            ttl_seconds: None,
            agent_id: None,
        }
    }

    fn ask(query: &str) -> RecallAgentStateRequest {
        RecallAgentStateRequest { query: query.into(), ..Default::default() }
    }

    fn keys(recalled: &RecallAgentStateResponse) -> Vec<String> {
        recalled.hits.iter().map(|h| h.state.key.clone()).collect()
    }

    /// Alice's decisions, notes and counters, and a decision of bob's on the same subject.
    async fn remembered(app: &TestCore) -> (Principal, Principal) {
        let (alice, bob) = (agent("alice", None), agent("bob", None));
        let service = app.service();
        let writes = [
            ("retry_policy", json!({"strategy": "exponential backoff with jitter", "max_attempts": 5})),
            ("lunch", json!("a cheese sandwich and an apple")),
            ("deploy_target", json!({"region": "eu-west", "notes": ["blue-green rollout"]})),
            ("retries_done", json!(17)),
        ];
        for (key, value) in writes {
            service.set_agent_state(&alice, entry(key, value, None)).await.unwrap();
        }
        service.set_agent_state(&bob, entry("retry_policy", json!("never retry, fail fast"), None)).await.unwrap();
        (alice, bob)
    }

    #[tokio::test]
    async fn an_agent_recalls_its_own_state_by_meaning_and_nobody_elses() {
        let app = TestCore::start().await;
        let (alice, bob) = remembered(&app).await;
        let service = app.service();
        let recalled = service.recall_agent_state(&alice, ask("how should failed requests be retried?")).await.unwrap();
        assert_eq!(recalled.mode, SearchMode::Hybrid);
        assert_eq!(keys(&recalled)[0], "retry_policy", "{:?}", keys(&recalled));
        let top = &recalled.hits[0];
        assert_eq!(top.state.value["strategy"], "exponential backoff with jitter", "alice's own decision");
        assert_eq!((top.state.agent_id.as_str(), top.state.version), ("alice", 1));
        assert!(top.scores.vector > 0.0 && (0.0..=1.0).contains(&top.scores.fuzzy), "{:?}", top.scores);
        assert!(recalled.hits.iter().all(|h| h.state.agent_id == "alice"), "never another agent's state");
        assert!(!keys(&recalled).contains(&"retries_done".to_string()), "a number carries no text");
        assert_eq!(keys(&recalled).len(), 3);

        let lunch = service.recall_agent_state(&alice, ask("what am I eating at noon")).await.unwrap();
        assert_eq!(keys(&lunch)[0], "lunch");

        let theirs = service.recall_agent_state(&bob, ask("how should failed requests be retried?")).await.unwrap();
        assert_eq!(keys(&theirs), ["retry_policy"]);
        assert_eq!(theirs.hits[0].state.value, json!("never retry, fail fast"));

        let as_bob = RecallAgentStateRequest { agent_id: Some("bob".into()), ..ask("retries") };
        let refused = service.recall_agent_state(&alice, as_bob.clone()).await.unwrap_err();
        assert_eq!(refused.code(), ErrorCode::PermissionDenied, "a caller recalls only its own state");
        let admin = service.recall_agent_state(&Principal::admin("root"), as_bob).await.unwrap();
        assert_eq!(keys(&admin), ["retry_policy"], "an admin recalls any agent's state");
        assert_eq!(admin.hits[0].state.agent_id, "bob");

        for bad in [ask("  "), RecallAgentStateRequest { limit: Some(0), ..ask("x") }] {
            let err = service.recall_agent_state(&alice, bad).await.unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArgument);
        }
    }

    #[tokio::test]
    async fn recall_follows_updates_deletes_sessions_and_expiry() {
        let app = TestCore::start().await;
        app.session("s1").await;
        app.session("s2").await;
        let (alice, _) = remembered(&app).await;
        let service = app.service();
        let question = || ask("how should failed requests be retried?");

        let changed = entry("retry_policy", json!({"strategy": "a fixed delay of two seconds between retries"}), None);
        service.set_agent_state(&alice, changed).await.unwrap();
        let recalled = service.recall_agent_state(&alice, question()).await.unwrap();
        assert_eq!(recalled.hits[0].state.value["strategy"], "a fixed delay of two seconds between retries");
        assert_eq!(recalled.hits[0].state.version, 2, "the point follows the entry's version");

        service.set_agent_state(&alice, entry("retry_policy", json!(3), None)).await.unwrap();
        let recalled = service.recall_agent_state(&alice, question()).await.unwrap();
        assert!(!keys(&recalled).contains(&"retry_policy".to_string()), "a value without text leaves recall");
        let gone =
            AgentStateKeyRequest { key: "lunch".into(), session_id: None, expected_version: None, agent_id: None };
        service.delete_agent_state(&alice, gone).await.unwrap();
        assert!(!keys(&service.recall_agent_state(&alice, ask("noon meal")).await.unwrap()).contains(&"lunch".into()));

        let in_s1 = entry("standup", json!("the standup moved to ten in the morning"), Some("s1"));
        service.set_agent_state(&alice, in_s1).await.unwrap();
        let in_s2 = entry("standup", json!("the standup is cancelled this week"), Some("s2"));
        service.set_agent_state(&alice, in_s2).await.unwrap();
        let only_s1 = RecallAgentStateRequest { session_id: Some("s1".into()), ..ask("when is the standup") };
        let recalled = service.recall_agent_state(&alice, only_s1).await.unwrap();
        assert_eq!(keys(&recalled), ["standup"]);
        assert_eq!(recalled.hits[0].state.session_id.as_deref(), Some("s1"));
        let everything = service.recall_agent_state(&alice, ask("when is the standup")).await.unwrap();
        assert_eq!(everything.hits.iter().filter(|h| h.state.key == "standup").count(), 2);

        // A caller limited to s2 sees s2's entries and those without a session, never s1's.
        let limited = agent("alice", Some(&["s2"]));
        let recalled = service.recall_agent_state(&limited, ask("when is the standup")).await.unwrap();
        let sessions: Vec<_> = recalled.hits.iter().map(|h| h.state.session_id.clone()).collect();
        assert!(sessions.contains(&Some("s2".into())) && !sessions.contains(&Some("s1".into())), "{sessions:?}");
        assert!(sessions.contains(&None), "entries without a session stay visible");
        let outside = RecallAgentStateRequest { session_id: Some("s1".into()), ..ask("standup") };
        assert_eq!(service.recall_agent_state(&limited, outside).await.unwrap_err().code(), ErrorCode::NotFound);

        let lease =
            SetAgentStateRequest { ttl_seconds: Some(1), ..entry("lease", json!("the build lock is held"), None) };
        service.set_agent_state(&alice, lease).await.unwrap();
        assert_eq!(keys(&service.recall_agent_state(&alice, ask("build lock")).await.unwrap())[0], "lease");
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        let recalled = service.recall_agent_state(&alice, ask("build lock")).await.unwrap();
        assert!(!keys(&recalled).contains(&"lease".to_string()), "an expired entry is not recalled");
        let lease_point = StateKey { agent_id: "alice".into(), session_id: None, key: "lease".into() }.point_id();
        assert_eq!(service.state_vectors().existing_ids(&[lease_point]).await.unwrap(), vec![lease_point]);
        let expired = service.expire(context_store::domain::Timestamp::now()).await.unwrap();
        assert_eq!(expired.agent_states, 1);
        assert!(service.state_vectors().existing_ids(&[lease_point]).await.unwrap().is_empty(), "expiry removes it");
    }

    #[tokio::test]
    async fn without_the_model_recall_is_lexical_and_fuzzy() {
        let app = TestCore::start().await;
        let (alice, _) = remembered(&app).await;
        app.embedder.failing.store(true, Ordering::SeqCst);
        let recalled = app.service().recall_agent_state(&alice, ask("cheese sandwich")).await.unwrap();
        assert_eq!(recalled.mode, SearchMode::LexicalFuzzy);
        assert!(recalled.degraded_reason.is_some());
        assert_eq!(keys(&recalled)[0], "lunch");
        assert!(recalled.hits.iter().all(|h| h.scores.vector == 0.0));
    }

    #[tokio::test]
    async fn a_state_write_outlives_its_vector_store_and_the_journal_repairs_its_point() {
        let app = TestCore::start().await;
        let alice = agent("alice", None);
        app.state_vectors.failing_writes.store(true, Ordering::SeqCst);
        let written = entry("decision", json!("we ship the parser on friday"), None);
        let stored = app.service().set_agent_state(&alice, written).await.expect("acknowledged by the graph");
        assert_eq!(stored.state.version, 1);
        let point = StateKey { agent_id: "alice".into(), session_id: None, key: "decision".into() }.point_id();
        assert!(app.service().state_vectors().existing_ids(&[point]).await.unwrap().is_empty());
        let pending = app.service().graph().pending_index(100).await.unwrap();
        assert!(pending.iter().any(|p| p.id == point), "its journal entry stays pending");
        app.state_vectors.failing_writes.store(false, Ordering::SeqCst);

        // A restart repairs it from the journal before serving.
        let app = app.restart().await;
        let recalled = app.service().recall_agent_state(&alice, ask("when do we ship")).await.unwrap();
        assert_eq!(keys(&recalled), ["decision"]);
        assert!(app.service().graph().pending_index(100).await.unwrap().iter().all(|p| p.id != point));

        // While running, the periodic repair does: pending at two checks in a row, it is re-applied.
        app.state_vectors.failing_writes.store(true, Ordering::SeqCst);
        let later = entry("decision", json!("we ship the parser next monday instead"), None);
        app.service().set_agent_state(&alice, later).await.unwrap();
        app.state_vectors.failing_writes.store(false, Ordering::SeqCst);
        for _ in 0..3 {
            app.service().repair_stale().await.unwrap();
        }
        let recalled = app.service().recall_agent_state(&alice, ask("when do we ship")).await.unwrap();
        assert_eq!(recalled.hits[0].state.value, json!("we ship the parser next monday instead"));
    }
}
