//! Operations through the real binary: doctor, resumable reindex, and backup/restore of the embedded data dir.

use std::process::Command;

use crate::helpers::{TestCore, assets_dir};

fn binary(data_dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_context-store"));
    command.env("CTX__DATA_DIR", data_dir).env("CTX__EMBEDDING__ASSETS_DIR", assets_dir()).env("RUST_LOG", "error");
    command
}

/// A stopped store with `n` contexts in session "ops"; returns its dir and the ids in id order.
async fn stopped_store(n: usize) -> (tempfile::TempDir, Vec<uuid::Uuid>) {
    let mut app = TestCore::start().await;
    app.session("ops").await;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(app.store("ops", "tester", &format!("operations note number {i} about backups")).await.context.id);
    }
    ids.sort();
    let decision = context_store::service::SetAgentStateRequest {
        key: "backup_plan".into(),
        value: serde_json::json!("copy the data dir every night"),
        session_id: None,
        expected_version: None,
        ttl_seconds: None,
        agent_id: None,
    };
    app.service().set_agent_state(&app.principal, decision).await.unwrap();
    app.core.take().unwrap().shutdown().await;
    let dir = std::mem::replace(&mut app.dir, tempfile::tempdir().unwrap());
    (dir, ids)
}

#[tokio::test]
async fn doctor_reports_each_check_and_fails_on_missing_assets() {
    let (dir, _) = stopped_store(2).await;
    let healthy = binary(dir.path()).arg("doctor").output().unwrap();
    let report = String::from_utf8_lossy(&healthy.stdout);
    assert!(healthy.status.success(), "{report}");
    for line in ["ok   data_dir", "ok   assets", "ok   embedder", "ok   vectors", "ok   keys"] {
        assert!(report.contains(line), "missing '{line}' in:\n{report}");
    }
    assert!(report.contains("ok   graph      sqlite: 1 sessions, 2 contexts"), "{report}");

    let broken = binary(dir.path()).env("CTX__EMBEDDING__ASSETS_DIR", "/nonexistent").arg("doctor").output().unwrap();
    let report = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(broken.status.code(), Some(1), "{report}");
    assert!(report.contains("FAIL assets") && report.contains("scripts/setup"), "{report}");
}

#[tokio::test]
async fn reindex_rebuilds_lost_vectors_and_resumes_from_its_checkpoint() {
    let (dir, ids) = stopped_store(8).await;
    std::fs::remove_dir_all(dir.path().join("vectors")).unwrap();
    std::fs::remove_dir_all(dir.path().join("state_vectors")).unwrap();
    // An interrupted run had done the first five.
    std::fs::write(dir.path().join("reindex.checkpoint"), ids[4].to_string()).unwrap();
    let resumed = binary(dir.path()).arg("reindex").output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains(&format!("resuming after {}", ids[4])));
    assert!(!dir.path().join("reindex.checkpoint").exists(), "a finished run removes its checkpoint");
    let app = TestCore::start_in(dir).await;
    assert_eq!(app.service().vectors().existing_ids(&ids).await.unwrap(), ids[5..].to_vec(), "only the rest");
    let state_point = context_store::store::graph::StateKey {
        agent_id: "tester".into(),
        session_id: None,
        key: "backup_plan".into(),
    }
    .point_id();
    assert_eq!(app.service().state_vectors().existing_ids(&[state_point]).await.unwrap(), vec![state_point]);
    let dir = {
        let mut app = app;
        app.core.take().unwrap().shutdown().await;
        std::mem::replace(&mut app.dir, tempfile::tempdir().unwrap())
    };
    // --recreate makes both collections again from the definition (how one made before the lexical stage
    // gains it) and fills them from the graph.
    let full = binary(dir.path()).args(["reindex", "--recreate"]).output().unwrap();
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stderr));
    let app = TestCore::start_in(dir).await;
    assert_eq!(app.service().vectors().existing_ids(&ids).await.unwrap(), ids);
    assert_eq!(app.service().state_vectors().existing_ids(&[state_point]).await.unwrap(), vec![state_point]);
    let everything = context_store::domain::ContextFilter::parse(
        Default::default(),
        context_store::domain::ReadScope { admin: true, ..Default::default() },
        context_store::domain::Timestamp::now(),
    )
    .unwrap();
    let lexical = app.service().vectors().lexical_search("number 3 backups", &everything, 10, false).await.unwrap();
    assert!(lexical.expect("a lexical index").iter().any(|h| h.context.content.contains("number 3 ")));
}

#[tokio::test]
async fn a_copy_of_the_stopped_data_dir_restores_everything() {
    let (dir, ids) = stopped_store(3).await;
    let backup = tempfile::tempdir().unwrap();
    let copied = Command::new("cp").arg("-a").arg(format!("{}/.", dir.path().display())).arg(backup.path()).status();
    assert!(copied.unwrap().success());
    drop(dir); // the original is gone
    let restored = TestCore::start_in(backup).await;
    let found = restored.service().graph().get_contexts(&ids).await.unwrap();
    assert_eq!(found.len(), 3);
    assert_eq!(restored.service().vectors().existing_ids(&ids).await.unwrap(), ids);
    let hits = restored
        .service()
        .search(
            &restored.principal,
            context_store::service::SearchRequest { query: "operations note number 2".into(), ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(hits.hits[0].context.content, "operations note number 2 about backups");
}

#[tokio::test]
async fn export_then_import_round_trips_everything_and_import_is_idempotent() {
    use context_store::service::{
        AgentStateKeyRequest, LinkContextsRequest, SetAgentStateRequest, StoreContextRequest, UpdateContextRequest,
    };
    use serde_json::json;
    let mut source = TestCore::start().await;
    source.session("x").await;
    let service = source.service().clone();
    let first = source.store("x", "ann", "the first plan for the launch").await.context;
    let update = UpdateContextRequest {
        id: first.id.to_string(),
        content: Some("the second plan for the launch".into()),
        tags: Some(vec!["plan".into()]),
        agent_id: Some("ann".into()),
        ..Default::default()
    };
    service.update_context(&source.principal, update).await.unwrap();
    let private = StoreContextRequest {
        session_id: "x".into(),
        content: "bob keeps this to himself".into(),
        agent_id: Some("bob".into()),
        visibility: Some(context_store::domain::Visibility::Private),
        metadata: Some(json!({"team": "core", "n": 3}).as_object().unwrap().clone()),
        ..Default::default()
    };
    let second = service.store_context(&source.principal, private).await.unwrap().context;
    let link = LinkContextsRequest {
        from_id: first.id.to_string(),
        to_id: second.id.to_string(),
        relation: "cites".into(),
        metadata: Some(json!({"why": "context"}).as_object().unwrap().clone()),
        agent_id: None,
    };
    // Only the source's author or an admin links from it, and ann may not see bob's private context.
    service.link_contexts(&context_store::auth::Principal::admin("root"), link).await.unwrap();
    let state = SetAgentStateRequest {
        key: "plan".into(),
        value: json!({"step": 2, "goal": "launch before the conference"}),
        session_id: Some("x".into()),
        agent_id: Some("ann".into()),
        expected_version: None,
        ttl_seconds: None,
    };
    service.set_agent_state(&source.principal, state).await.unwrap();
    let ids = vec![first.id, second.id];
    let graph = service.graph().clone();
    let everything = context_store::domain::ReadScope { admin: true, ..Default::default() };
    let (contexts, versions, related) = (
        graph.get_contexts(&ids).await.unwrap(),
        graph.context_versions(first.id, None, None).await.unwrap(),
        graph.related(first.id, 1, None, false, 10, &everything).await.unwrap(),
    );
    let counts = graph.counts().await.unwrap();
    drop((service, graph));
    source.core.take().unwrap().shutdown().await;
    // The stores close when the test core goes; the export opens them in a process of its own.
    let dir = std::mem::replace(&mut source.dir, tempfile::tempdir().unwrap());
    drop(source);

    let file = dir.path().join("export.jsonl");
    let exported = binary(dir.path()).args(["export", "--out"]).arg(&file).output().unwrap();
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count(),
        1 + 1 + 2 + 1 + 1,
        "header, session, 2 contexts, relation, state"
    );

    let target = tempfile::tempdir().unwrap();
    let imported = binary(target.path()).arg("import").arg(&file).output().unwrap();
    let report = String::from_utf8_lossy(&imported.stderr);
    assert!(imported.status.success(), "{report}");
    assert!(report.contains(r#""contexts":2,"versions":1,"relations":1,"agent_states":1"#), "{report}");
    let again = binary(target.path()).arg("import").arg(&file).output().unwrap();
    let report = String::from_utf8_lossy(&again.stderr);
    assert!(
        report.contains(r#""sessions":0,"contexts":0,"versions":0"#) && report.contains(r#""agent_states":0"#),
        "{report}"
    );

    let restored = TestCore::start_in(target).await;
    let graph = restored.service().graph();
    let mut got = graph.get_contexts(&ids).await.unwrap();
    let mut want = contexts;
    got.sort_by_key(|c| c.id);
    want.sort_by_key(|c| c.id);
    assert_eq!(got, want, "every field of every context");
    assert_eq!(graph.context_versions(first.id, None, None).await.unwrap(), versions);
    assert_eq!(graph.related(first.id, 1, None, false, 10, &everything).await.unwrap(), related);
    let restored_counts = graph.counts().await.unwrap();
    assert_eq!(
        (restored_counts.sessions, restored_counts.contexts, restored_counts.agent_states),
        (counts.sessions, counts.contexts, counts.agent_states)
    );
    assert_eq!(restored.service().vectors().existing_ids(&ids).await.unwrap().len(), 2);
    let key = AgentStateKeyRequest {
        key: "plan".into(),
        session_id: Some("x".into()),
        agent_id: Some("ann".into()),
        expected_version: None,
    };
    let state = restored.service().get_agent_state(&restored.principal, key).await.unwrap();
    assert_eq!(state.state.value, json!({"step": 2, "goal": "launch before the conference"}));
    let recall = context_store::service::RecallAgentStateRequest {
        query: "when is the launch".into(),
        agent_id: Some("ann".into()),
        ..Default::default()
    };
    let recalled = restored.service().recall_agent_state(&restored.principal, recall).await.unwrap();
    assert_eq!(recalled.hits.len(), 1, "an imported entry is recalled by meaning");
    assert_eq!(recalled.hits[0].state.key, "plan");
}
