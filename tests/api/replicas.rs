//! Two replicas of the service on one Neo4j and one Qdrant server (the scale-out stack), as real processes:
//! they start together, a write through one is read and found through the other, a cached search is stale
//! for at most `search.cache_ttl_ms`, and a replica killed under writers leaves nothing the other does not
//! repair while it runs. Each has its own data dir: API keys live in Neo4j, so both authenticate the same
//! keys, the first-start admin key is made once, and a revocation through the `keys` command reaches both.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{ServerProcess, eventually, neo4j_exclusive, neo4j_uri};

/// Runs `context-store keys ...` with the replicas' settings; returns its standard output.
pub fn keys_command(env: &[(&str, &str)], dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_context-store"))
        .arg("keys")
        .args(args)
        .env("CTX__DATA_DIR", dir)
        .env("RUST_LOG", "error")
        .envs(env.iter().copied())
        .output()
        .expect("the keys command runs");
    assert!(output.status.success(), "keys {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

async fn status_of(http: &reqwest::Client, base: &str, key: &str) -> u16 {
    let response = http.post(format!("{base}/mcp/tool/list_sessions")).bearer_auth(key).json(&json!({})).send();
    response.await.unwrap().status().as_u16()
}

pub async fn call(http: &reqwest::Client, base: &str, key: &str, tool: &str, args: Value) -> Result<Value, String> {
    let response = http
        .post(format!("{base}/mcp/tool/{tool}"))
        .bearer_auth(key)
        .json(&args)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let ok = response.status().is_success();
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if ok { Ok(body) } else { Err(body.to_string()) }
}

#[tokio::test]
#[ignore = "needs Neo4j and a Qdrant server: scripts/test starts both and runs this"]
async fn qdrant_server_two_replicas_share_one_store_and_repair_each_other() {
    let _exclusive = neo4j_exclusive().await;
    let qdrant = std::env::var("QDRANT_URL").expect("QDRANT_URL names a Qdrant server");
    let (dir_a, dir_b, dir_cli) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let collection = format!("replicas_{}", uuid::Uuid::now_v7().simple());
    let neo4j = neo4j_uri();
    let env = [
        ("CTX__GRAPH__BACKEND", "neo4j"),
        ("CTX__GRAPH__NEO4J__URI", neo4j.as_str()),
        ("CTX__VECTOR__BACKEND", "qdrant"),
        ("CTX__VECTOR__QDRANT__URL", qdrant.as_str()),
        ("CTX__VECTOR__QDRANT__COLLECTION", collection.as_str()),
        ("CTX__SEARCH__CACHE_TTL_MS", "1000"),
        ("CTX__GRAPH__REPAIR_INTERVAL_MS", "2000"),
        ("CTX__AUTH__JWT_SECRET", "one-secret-for-every-replica"),
    ];
    // Both start at once on an empty Neo4j: schema, Qdrant collection and the first admin key race.
    let ((first, _), (second, _)) =
        tokio::join!(ServerProcess::start(dir_a.path(), &env), ServerProcess::start(dir_b.path(), &env));
    let http = reqwest::Client::new();
    let (a, b) = (first.base.clone(), second.base.clone());
    let listed = keys_command(&env, dir_cli.path(), &["list"]);
    let admins = listed.lines().filter(|line| line.split_whitespace().nth(1) == Some("admin")).count();
    assert_eq!(admins, 1, "one first-start admin key for two replicas starting together:\n{listed}");

    // A key made with the keys command (on Neo4j) works on both replicas; revoked, it stops on both within
    // the documented bound (how long a replica trusts a credential it verified).
    let key =
        keys_command(&env, dir_cli.path(), &["create", "--agent-id", "ops", "--permissions", "read,write,query,admin"]);
    let key = key.trim().to_string();
    let reader = keys_command(&env, dir_cli.path(), &["create", "--agent-id", "reader", "--permissions", "read"]);
    let reader = reader.trim().to_string();
    assert_eq!((status_of(&http, &a, &reader).await, status_of(&http, &b, &reader).await), (200, 200));
    let reader_id = reader.strip_prefix("cs_").and_then(|rest| rest.split('_').next()).unwrap();
    keys_command(&env, dir_cli.path(), &["revoke", reader_id]);
    tokio::time::sleep(context_store::auth::VERIFIED_TTL + Duration::from_millis(300)).await;
    assert_eq!(
        (status_of(&http, &a, &reader).await, status_of(&http, &b, &reader).await),
        (401, 401),
        "a revoked key is refused by every replica once its verification has aged out"
    );

    call(&http, &a, &key, "create_session", json!({"id": "shared", "purpose": "replicas"})).await.unwrap();
    let stored = call(
        &http,
        &a,
        &key,
        "store_context",
        json!({"session_id": "shared", "content": "the staging database moves to the new cluster on Friday"}),
    )
    .await
    .unwrap();
    let id = stored["context"]["id"].as_str().unwrap().to_string();
    let got = call(&http, &b, &key, "get_context", json!({"id": id})).await.unwrap();
    assert_eq!(got["context"]["content"], stored["context"]["content"], "a write through A is read through B");
    let search = json!({"query": "when does staging move", "session_id": "shared"});
    let found = call(&http, &b, &key, "search_context", search.clone()).await.unwrap();
    assert_eq!(found["hits"][0]["context"]["id"], json!(id), "and found through B: {found}");

    // B caches that answer; a write through A shows in B's search within the cache TTL.
    let newer = call(
        &http,
        &a,
        &key,
        "store_context",
        json!({"session_id": "shared", "content": "staging moves on Friday at 18:00, after the freeze"}),
    )
    .await
    .unwrap();
    let newer_id = newer["context"]["id"].clone();
    eventually(Duration::from_secs(10), "B's cached search sees A's write", async || {
        let found = call(&http, &b, &key, "search_context", search.clone()).await.unwrap();
        found["hits"].as_array().unwrap().iter().any(|hit| hit["context"]["id"] == newer_id)
    })
    .await;

    // Writers on A; A is killed with SIGKILL mid-way; B, still running, repairs what A left half done.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|n| {
            let (http, a, key, acked, stop) = (http.clone(), a.clone(), key.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                for step in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let content = format!("writer {n} step {step}: the replica log line {}", n * 1000 + step);
                    let args = json!({"session_id": "shared", "content": content});
                    match call(&http, &a, &key, "store_context", args).await {
                        Ok(body) => acked.lock().unwrap().push(body["context"]["id"].as_str().unwrap().to_string()),
                        Err(_) => break, // A is gone
                    }
                }
            })
        })
        .collect();
    eventually(Duration::from_secs(60), "A acknowledged some writes", async || acked.lock().unwrap().len() >= 20).await;
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    for id in &acked {
        call(&http, &b, &key, "get_context", json!({"id": id}))
            .await
            .expect("every acknowledged write is in the graph");
    }
    eventually(Duration::from_secs(60), "B repaired the journal A left", async || {
        let metrics = call(&http, &b, &key, "get_metrics", json!({})).await.unwrap();
        let items = &metrics["items"];
        items["pending_index"] == json!(0) && items["contexts"] == items["vectors"]
    })
    .await;
    let last = acked.last().unwrap();
    let content =
        call(&http, &b, &key, "get_context", json!({"id": last})).await.unwrap()["context"]["content"].clone();
    let found = call(&http, &b, &key, "search_context", json!({"query": content, "session_id": "shared", "limit": 50}))
        .await
        .unwrap();
    assert!(
        found["hits"].as_array().unwrap().iter().any(|hit| hit["context"]["id"] == json!(last)),
        "the last acknowledged write is searchable through B"
    );
    drop(second);
}
