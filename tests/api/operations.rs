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
    // An interrupted run had done the first five.
    std::fs::write(dir.path().join("reindex.checkpoint"), ids[4].to_string()).unwrap();
    let resumed = binary(dir.path()).arg("reindex").output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(String::from_utf8_lossy(&resumed.stderr).contains(&format!("resuming after {}", ids[4])));
    assert!(!dir.path().join("reindex.checkpoint").exists(), "a finished run removes its checkpoint");
    let app = TestCore::start_in(dir).await;
    assert_eq!(app.service().vectors().existing_ids(&ids).await.unwrap(), ids[5..].to_vec(), "only the rest");
    let dir = {
        let mut app = app;
        app.core.take().unwrap().shutdown().await;
        std::mem::replace(&mut app.dir, tempfile::tempdir().unwrap())
    };
    let full = binary(dir.path()).args(["reindex", "--from-start"]).output().unwrap();
    assert!(full.status.success());
    let app = TestCore::start_in(dir).await;
    assert_eq!(app.service().vectors().existing_ids(&ids).await.unwrap(), ids);
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
