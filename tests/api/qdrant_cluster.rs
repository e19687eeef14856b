//! The full scale-out stack with a Qdrant cluster: two service replicas on one Neo4j and a 3-node Qdrant
//! cluster (3 shards, 2 copies of each, writes confirmed by 1), started by `../shared/qdrant/start-cluster`.
//! Writers go through both replicas while one Qdrant node is killed with SIGKILL; every acknowledged write is
//! then in the graph and searchable, with the node down and again after it has come back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{ServerProcess, eventually, neo4j_exclusive, neo4j_uri, qdrant_scripts};
use crate::replicas::{call, keys_command};

/// A throwaway cluster; stopped and removed when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    urls: Vec<String>,
}

impl Cluster {
    fn start(nodes: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(qdrant_scripts().join("start-cluster"))
            .arg(dir.path())
            .arg(nodes.to_string())
            .output()
            .expect("start-cluster runs (scripts/test runs this test only where ../shared/qdrant exists)");
        assert!(output.status.success(), "start-cluster: {}", String::from_utf8_lossy(&output.stderr));
        let urls = String::from_utf8(output.stdout).unwrap().lines().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(urls.len(), nodes);
        Self { dir, urls }
    }

    fn node(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("node-{n}"))
    }

    fn pid(&self, n: usize) -> u32 {
        std::fs::read_to_string(self.node(n).join("qdrant.pid")).unwrap().trim().parse().unwrap()
    }

    /// Kills node `n` with SIGKILL; returns how to start it again (its command line and environment).
    fn kill(&self, n: usize) -> (Vec<String>, Vec<(String, String)>) {
        let pid = self.pid(n);
        let split = |path: String| -> Vec<String> {
            let bytes = std::fs::read(path).unwrap();
            bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let command = split(format!("/proc/{pid}/cmdline"));
        let environ = split(format!("/proc/{pid}/environ"))
            .into_iter()
            .filter_map(|pair| pair.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .filter(|(k, _)| k.starts_with("QDRANT__"))
            .collect();
        std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        (command, environ)
    }

    /// Starts node `n` again from its storage (it rejoins through its Raft state) and waits until it is ready.
    async fn restart(&self, n: usize, command: &[String], environ: &[(String, String)]) {
        let log = std::fs::File::create(self.node(n).join("qdrant.restart.log")).unwrap();
        let mut child = std::process::Command::new(&command[0])
            .args(command[1..].iter().filter(|a| !a.is_empty()))
            .envs(environ.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(self.node(n).join("storage"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the node starts again");
        std::fs::write(self.node(n).join("qdrant.pid"), child.id().to_string()).unwrap();
        // stop-cluster stops it by its pid file; this thread reaps it then.
        std::thread::spawn(move || child.wait());
        let http = std::fs::read_to_string(self.node(n).join("http_port")).unwrap();
        let ready = format!("http://127.0.0.1:{}/readyz", http.trim());
        let client = reqwest::Client::new();
        eventually(Duration::from_secs(90), "the restarted node is ready", async || {
            client.get(&ready).send().await.is_ok_and(|r| r.status().is_success())
        })
        .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(qdrant_scripts().join("stop-cluster")).arg(self.dir.path()).status();
    }
}

#[tokio::test]
#[ignore = "needs Neo4j and ../shared/qdrant: scripts/test starts Neo4j and runs this"]
async fn qdrant_server_cluster_keeps_every_acknowledged_write_when_a_node_dies() {
    let _exclusive = neo4j_exclusive().await;
    let cluster = Cluster::start(3);
    let urls = cluster.urls.join(",");
    let neo4j = neo4j_uri();
    let collection = format!("cluster_{}", uuid::Uuid::now_v7().simple());
    let env = [
        ("CTX__GRAPH__BACKEND", "neo4j"),
        ("CTX__GRAPH__NEO4J__URI", neo4j.as_str()),
        ("CTX__VECTOR__BACKEND", "qdrant"),
        ("CTX__VECTOR__QDRANT__URL", urls.as_str()),
        ("CTX__VECTOR__QDRANT__COLLECTION", collection.as_str()),
        ("CTX__VECTOR__QDRANT__SHARD_NUMBER", "3"),
        ("CTX__VECTOR__QDRANT__REPLICATION_FACTOR", "2"),
        ("CTX__VECTOR__QDRANT__WRITE_CONSISTENCY_FACTOR", "1"),
        // A write to a shard whose other copy just died waits for the cluster to mark that copy dead.
        ("CTX__VECTOR__QDRANT__TIMEOUT_MS", "15000"),
        ("CTX__GRAPH__REPAIR_INTERVAL_MS", "1000"),
        ("CTX__AUTH__JWT_SECRET", "one-secret-for-every-replica"),
    ];
    let (dir_a, dir_b, dir_cli) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ((first, _), (second, _)) =
        tokio::join!(ServerProcess::start(dir_a.path(), &env), ServerProcess::start(dir_b.path(), &env));
    let key = keys_command(&env, dir_cli.path(), &["create", "--agent-id", "ops", "--permissions", "read,write,admin"]);
    let key = key.trim().to_string();
    let http = reqwest::Client::new();
    let replicas = [first.base.clone(), second.base.clone()];
    call(&http, &replicas[0], &key, "create_session", json!({"id": "cluster", "purpose": "cluster"})).await.unwrap();
    // The collection has the layout the settings asked for.
    let http_port = std::fs::read_to_string(cluster.node(1).join("http_port")).unwrap();
    let info: serde_json::Value = http
        .get(format!("http://127.0.0.1:{}/collections/{collection}", http_port.trim()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let params = &info["result"]["config"]["params"];
    assert_eq!(
        (&params["shard_number"], &params["replication_factor"], &params["write_consistency_factor"]),
        (&json!(3), &json!(2), &json!(1)),
        "{info}"
    );

    // Writers through both replicas; node 2 of 3 is killed once some writes are in.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|n| {
            let (http, key, acked, stop) = (http.clone(), key.clone(), acked.clone(), stop.clone());
            let base = replicas[n % 2].clone();
            tokio::spawn(async move {
                let mut failed = 0;
                for step in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let content = format!("cluster writer {n} step {step} notes ticket {}", 7919 * (n * 1000 + step));
                    let args = json!({"session_id": "cluster", "content": content});
                    match call(&http, &base, &key, "store_context", args).await {
                        Ok(body) => {
                            acked.lock().unwrap().push((body["context"]["id"].as_str().unwrap().to_string(), content))
                        }
                        // Not acknowledged (a write caught by the node's death): the writer goes on.
                        Err(_) => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    eventually(Duration::from_secs(120), "some writes before the kill", async || acked.lock().unwrap().len() >= 30)
        .await;
    let (command, environ) = cluster.kill(2);
    let killed = cluster.pid(2);
    eventually(Duration::from_secs(10), "node 2 is gone", async || {
        !Path::new(&format!("/proc/{killed}/cmdline")).exists()
            || std::fs::read(format!("/proc/{killed}/cmdline")).unwrap_or_default().is_empty()
    })
    .await;
    let at_kill = acked.lock().unwrap().len();
    eventually(Duration::from_secs(120), "writes go on with a node down", async || {
        acked.lock().unwrap().len() >= at_kill + 40
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut failed = 0;
    for writer in writers {
        failed += writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} writes acknowledged ({} after the kill), {failed} not acknowledged",
        acked.len(),
        acked.len() - at_kill
    );

    let check_all = async |when: &str| {
        for (n, (id, content)) in acked.iter().enumerate() {
            let base = &replicas[n % 2];
            call(&http, base, &key, "get_context", json!({"id": id}))
                .await
                .unwrap_or_else(|err| panic!("{when}: acknowledged write {id} is in the graph: {err}"));
            let query = json!({"query": content, "session_id": "cluster", "limit": 20});
            let found = call(&http, base, &key, "search_context", query).await.unwrap();
            assert!(
                found["hits"].as_array().unwrap().iter().any(|hit| hit["context"]["id"] == json!(id)),
                "{when}: acknowledged write {id} is searchable"
            );
        }
    };
    // Graph and cluster agree (whatever a write cut off mid-way left in the journal is repaired), then every
    // acknowledged write is checked: with the node down, and again after it has come back.
    let agree_then_check = async |replica: &str, when: &str| {
        eventually(Duration::from_secs(90), &format!("graph and cluster agree, {when}"), async || {
            let metrics = call(&http, replica, &key, "get_metrics", json!({})).await.unwrap();
            let items = &metrics["items"];
            items["pending_index"] == json!(0) && items["contexts"] == items["vectors"]
        })
        .await;
        check_all(when).await;
    };
    agree_then_check(&replicas[1], "node down").await;
    cluster.restart(2, &command, &environ).await;
    agree_then_check(&replicas[0], "node back").await;
    drop((first, second));
}
