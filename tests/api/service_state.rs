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
