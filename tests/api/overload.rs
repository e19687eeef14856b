//! Overload: 1024 concurrent connections against a server limited to 32 requests in flight. Every request
//! gets an answer (no client timeouts): served, or refused at once with 503/429 and Retry-After. Server memory
//! stays bounded, and once the burst is over requests are served again as before.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{ServerProcess, admin_key_in};

const CONNECTIONS: usize = 1024;

async fn store(http: &reqwest::Client, server: &ServerProcess, key: &str, text: String) -> reqwest::Response {
    http.post(format!("{}/mcp/tool/store_context", server.base))
        .bearer_auth(key)
        .json(&json!({"session_id": "load", "content": text}))
        .send()
        .await
        .expect("every request is answered, none times out")
}

/// Sequential stores; returns the rate achieved (reported, never asserted).
async fn serve_sequentially(server: &ServerProcess, key: &str, label: &str) -> f64 {
    let http = reqwest::Client::new();
    let started = Instant::now();
    for i in 0..20 {
        let response = store(&http, server, key, format!("{label} sequential write {i}")).await;
        assert_eq!(response.status().as_u16(), 200, "{label}: request {i} is served");
    }
    20.0 / started.elapsed().as_secs_f64()
}

#[tokio::test]
async fn a_burst_beyond_the_concurrency_limit_is_shed_with_retry_after_and_the_service_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let key = admin_key_in(dir.path()).await;
    let (server, _) = ServerProcess::start(dir.path(), &[("CTX__SERVER__MAX_CONCURRENCY", "32")]).await;
    let http = reqwest::Client::new();
    let session = json!({"id": "load", "purpose": "overload"});
    let created = http.post(format!("{}/mcp/tool/create_session", server.base)).bearer_auth(&key).json(&session);
    assert!(created.send().await.unwrap().status().is_success());
    let before = serve_sequentially(&server, &key, "before").await;

    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let (base, key) = (server.base.clone(), key.clone());
            tokio::spawn(async move {
                // Its own client: its own connection.
                let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
                let mut outcomes = Vec::new();
                for i in 0..2 {
                    let started = Instant::now();
                    let response = http
                        .post(format!("{base}/mcp/tool/store_context"))
                        .bearer_auth(&key)
                        .json(&json!({"session_id": "load", "content": format!("burst {c} write {i} of a busy day")}))
                        .send()
                        .await
                        .expect("every request is answered, none times out");
                    let retry_after = response.headers().contains_key("retry-after");
                    outcomes.push((response.status().as_u16(), retry_after, started.elapsed()));
                }
                outcomes
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.unwrap());
    }
    let served = outcomes.iter().filter(|o| o.0 == 200).count();
    let mut refused: Vec<Duration> = outcomes.iter().filter(|o| o.0 != 200).map(|o| o.2).collect();
    for (status, retry_after, _) in &outcomes {
        assert!(matches!(status, 200 | 429 | 503), "unexpected status {status}");
        assert!(*status == 200 || *retry_after, "a refusal ({status}) carries Retry-After");
    }
    assert!(served > 0, "some of the burst is served");
    assert!(!refused.is_empty(), "1024 connections against 32 slots: some are refused");
    refused.sort();
    let peak = server.peak_rss_mib();
    assert!(peak < 2048.0, "server memory stays bounded: peak {peak:.0} MiB");

    let after = serve_sequentially(&server, &key, "after").await;
    eprintln!(
        "overload: {} requests from {CONNECTIONS} connections, {served} served, {} refused (p50 {:?}, p99 {:?}), \
         peak RSS {peak:.0} MiB, sequential writes/s before {before:.1}, after {after:.1}",
        outcomes.len(),
        refused.len(),
        refused[refused.len() / 2],
        refused[refused.len() * 99 / 100],
    );
}
