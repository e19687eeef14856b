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
