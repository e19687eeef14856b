use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use context_store::domain::{ContextFilterArgs, ReadScope};
use context_store::error::ErrorCode;
use context_store::service::{SearchRequest, UpdateContextRequest};
use context_store::store::InsertOutcome;
use uuid::Uuid;

use crate::helpers::{
    TestCore, assets_dir, collection_for, graph_under_test, neo4j_exclusive, neo4j_uri, vectors_under_test,
};

#[tokio::test]
async fn a_failed_vector_write_leaves_no_graph_node_and_its_journal_entry_settles_the_vector_side() {
    let app = TestCore::start().await;
    app.session("s1").await;
    let kept = app.store("s1", "alice", "original text").await;
    let kept_embedding = app.service().graph().index_entries(&[kept.context.id]).await.unwrap().remove(0).embedding;
    app.vectors.failing_writes.store(true, Ordering::SeqCst);

    let err = app
        .service()
        .store_context(
            &app.principal,
            context_store::service::StoreContextRequest {
                session_id: "s1".into(),
                content: "never stored".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    let update = app
        .service()
        .update_context(
            &app.principal,
            UpdateContextRequest {
                id: kept.context.id.to_string(),
                content: Some("changed text".into()),
                agent_id: Some("alice".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(update.code(), ErrorCode::Unavailable);
    app.vectors.failing_writes.store(false, Ordering::SeqCst);

    let counts = app.service().graph().counts().await.unwrap();
    assert_eq!(counts.contexts, 1, "the failed store left no context behind");
    let current = app.get(kept.context.id).await.unwrap();
    assert_eq!(current.context.content, "original text");
    assert_eq!(current.context.version, 1);
    assert!(current.versions.is_empty(), "the failed update left no version behind");
    let entry = app.service().graph().index_entries(&[kept.context.id]).await.unwrap().remove(0);
    assert!(entry.embedding == kept_embedding, "a re-index would pair the old text with the new text's embedding");
    // The undone writes keep their journal entries (a failed vector write may have been applied after all):
    // the running repair makes the vector side match the graph, then nothing is pending.
    assert!(app.service().graph().counts().await.unwrap().pending_index >= 2);
    app.service().flush().await.unwrap();
    app.service().repair_stale().await.unwrap();
    app.service().repair_stale().await.unwrap();
    assert_eq!(app.service().graph().counts().await.unwrap().pending_index, 0);
    assert_eq!(app.service().vectors().count().await.unwrap(), 1, "no point for the undone store");
    let everything = context_store::domain::ContextFilter {
        scope: ReadScope { admin: true, ..Default::default() },
        now: context_store::domain::Timestamp::now(),
        ..Default::default()
    };
    let points = app.service().vectors().scroll(&everything, 10).await.unwrap();
    assert_eq!(points[0].content, "original text", "the vector side holds the restored text");
}

#[tokio::test]
async fn everything_is_there_after_a_restart() {
    let app = TestCore::start().await;
    app.session("s1").await;
    let stored = app.store("s1", "alice", "Remember to rotate the API keys every ninety days").await;
    let app = app.restart().await;
    let got = app.get(stored.context.id).await.unwrap();
    assert_eq!(got.context, stored.context);
    let found = app
        .service()
        .search(
            &app.principal,
            SearchRequest { query: "how often should keys be rotated".into(), ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(found.hits[0].context.id, stored.context.id);
}

#[tokio::test]
async fn journaled_items_missing_from_the_vector_store_are_repaired_at_start_up() {
    let app = TestCore::start().await;
    app.session("s1").await;
    // Simulate a crash between the graph write and the vector write.
    let context = crate::helpers::public_context("written to the graph only", "s1", "alice");
    let vector = crate::helpers::model().embed(vec![context.content.clone()]).await.unwrap().remove(0);
    let scope = ReadScope { agent_id: "alice".into(), admin: false, sessions: None };
    let outcome = app.service().graph().insert_context(&context, &vector, &scope).await.unwrap();
    assert!(matches!(outcome, InsertOutcome::Inserted { .. }));
    assert!(app.service().vectors().existing_ids(&[context.id]).await.unwrap().is_empty());

    let app = app.restart().await;
    assert_eq!(app.service().vectors().existing_ids(&[context.id]).await.unwrap(), vec![context.id]);
    assert_eq!(app.service().graph().counts().await.unwrap().pending_index, 0);
}

/// Runs the hidden `crash-writer` command, collects acknowledged ids for a while, then kills it with
/// SIGKILL. Returns (id, content) of every acknowledged write.
fn run_and_kill(data_dir: &std::path::Path, run_for: Duration) -> Vec<(Uuid, String)> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_context-store"));
    if graph_under_test() == "neo4j" {
        command.env("CTX__GRAPH__BACKEND", "neo4j").env("CTX__GRAPH__NEO4J__URI", neo4j_uri());
    }
    if vectors_under_test() == "qdrant" {
        let url = std::env::var("QDRANT_URL").expect("QDRANT_URL");
        command
            .env("CTX__VECTOR__BACKEND", "qdrant")
            .env("CTX__VECTOR__QDRANT__URL", url)
            .env("CTX__VECTOR__QDRANT__COLLECTION", collection_for(data_dir));
    }
    let mut child = command
        .args(["crash-writer", "--session", "crash", "--writers", "16"])
        .env("CTX__DATA_DIR", data_dir)
        .env("CTX__EMBEDDING__ASSETS_DIR", assets_dir())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut acked = Vec::new();
    let started = Instant::now();
    let mut first_ack = None;
    while started.elapsed() < Duration::from_secs(120) {
        if let Ok(line) = receiver.recv_timeout(Duration::from_millis(50))
            && let Some(rest) = line.strip_prefix("ACK ")
        {
            let (id, content) = rest.split_once(' ').expect("ACK <id> <content>");
            acked.push((Uuid::parse_str(id).unwrap(), content.to_string()));
            first_ack.get_or_insert_with(Instant::now);
        }
        if first_ack.is_some_and(|t| t.elapsed() >= run_for) {
            break;
        }
    }
    child.kill().expect("SIGKILL delivered");
    child.wait().unwrap();
    // Lines already written before the kill still count as acknowledged.
    while let Ok(line) = receiver.recv_timeout(Duration::from_millis(200)) {
        if let Some((id, content)) = line.strip_prefix("ACK ").and_then(|r| r.split_once(' ')) {
            acked.push((Uuid::parse_str(id).unwrap(), content.to_string()));
        }
    }
    acked
}

#[tokio::test]
async fn every_acknowledged_write_survives_kill_9_under_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let neo4j = match graph_under_test() {
        "neo4j" => Some(neo4j_exclusive().await),
        _ => None,
    };
    let mut all = Vec::new();
    for round in 0..2 {
        let acked = run_and_kill(dir.path(), Duration::from_millis(1500 + 700 * round));
        assert!(!acked.is_empty(), "round {round}: the writer acknowledged nothing");
        all.extend(acked);
    }
    let app = TestCore::open(dir, neo4j).await;
    let ids: Vec<Uuid> = all.iter().map(|(id, _)| *id).collect();
    let in_graph = app.service().graph().get_contexts(&ids).await.unwrap();
    assert_eq!(in_graph.len(), ids.len(), "every acknowledged write is in the graph");
    for context in &in_graph {
        let expected = &all.iter().find(|(id, _)| *id == context.id).unwrap().1;
        assert_eq!(&context.content, expected);
    }
    let mut in_vectors = app.service().vectors().existing_ids(&ids).await.unwrap();
    in_vectors.sort();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(in_vectors, sorted, "every acknowledged write has its vector");
    let graph_total = app.service().graph().counts().await.unwrap().contexts;
    assert_eq!(app.service().vectors().count().await.unwrap(), graph_total, "no vector without its graph item");
    // Searchable: a sample of acknowledged texts is found by its own words.
    for (id, content) in all.iter().step_by((all.len() / 5).max(1)) {
        let hits = app
            .service()
            .search(
                &app.principal,
                SearchRequest {
                    query: content.clone(),
                    filter: ContextFilterArgs { session_id: Some("crash".into()), ..Default::default() },
                    limit: Some(10),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let found: Vec<(&str, f64)> =
            hits.hits.iter().map(|h| (h.context.content.as_str(), h.scores.final_score)).collect();
        assert!(
            hits.hits.iter().any(|h| h.context.id == *id),
            "{content} not found by search ({:?}, {:?}); its best 10: {found:?}",
            hits.mode,
            hits.degraded_reason
        );
    }
}

/// A delete that stopped after its graph tombstone (a crash, or a purge that failed) is finished by the
/// repair: the vector point goes and the tombstone is purged, so no deleted text stays in the store.
#[tokio::test]
async fn the_repair_purges_a_delete_that_stopped_at_its_tombstone() {
    let app = TestCore::start().await;
    app.session("s1").await;
    let gone = app.store("s1", "alice", "a note that is deleted").await;
    app.store("s1", "alice", "a note that stays").await;
    app.service().graph().delete_context(gone.context.id, None).await.unwrap();
    let admin = context_store::auth::Principal::admin("ops");
    let rows = || async {
        let query = if app.service().graph().query_language() == "sql" {
            "SELECT count(*) AS n FROM contexts"
        } else {
            "MATCH (c:Context) RETURN count(c) AS n"
        };
        let request =
            context_store::service::analytics::QueryGraphRequest { query: query.into(), ..Default::default() };
        let answer = app.service().query_graph(&admin, request).await.unwrap();
        answer.result.rows[0][0].as_u64().unwrap()
    };
    assert_eq!(rows().await, 2, "the tombstone is still a row");
    app.service().flush().await.unwrap();
    app.service().repair_stale().await.unwrap();
    app.service().repair_stale().await.unwrap();
    assert_eq!(app.service().graph().counts().await.unwrap().pending_index, 0);
    assert_eq!(app.service().vectors().count().await.unwrap(), 1, "the deleted context's point is gone");
    assert_eq!(rows().await, 1, "the tombstone is purged");
}
