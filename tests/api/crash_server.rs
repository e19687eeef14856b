//! Crash test through the real server: a `context-store serve` child, 128 concurrent writers over the HTTP
//! tool endpoint (store, update, delete, agent state), SIGKILL at a random moment, restart, repeat. After
//! every restart each acknowledged write is there with its acknowledged content, acknowledged deletes are
//! gone, graph and vectors hold the same items, and acknowledged texts are searchable.
//! Rounds: `CTX_CRASH_ROUNDS` (default 3 in the suite; 10 for the full run described in README).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{ServerProcess, admin_key_in};

const WRITERS: usize = 128;

/// What a writer was told happened to one of its items.
#[derive(Debug, Clone, PartialEq)]
enum Acked {
    Present(String),
    Deleted,
}

#[derive(Default)]
struct Ledger {
    contexts: HashMap<String, Acked>,
    /// agent state key -> acknowledged value
    states: HashMap<String, i64>,
    /// Items whose last operation got no answer (the kill): either outcome is correct.
    uncertain: std::collections::HashSet<String>,
}

/// Calls a tool: Ok(result), Err(Some(code)) for a tool error, Err(None) when no answer came.
async fn call(http: &reqwest::Client, base: &str, key: &str, tool: &str, args: Value) -> Result<Value, Option<String>> {
    let response =
        http.post(format!("{base}/mcp/tool/{tool}")).bearer_auth(key).json(&args).send().await.map_err(|_| None)?;
    let ok = response.status().is_success();
    let body: Value = response.json().await.map_err(|_| None)?;
    if ok {
        return Ok(body);
    }
    let (code, message) = (body["error"]["code"].as_str(), body["error"]["message"].as_str());
    Err(Some(format!("{}: {}", code.unwrap_or("?"), message.unwrap_or(""))))
}

async fn writer(base: String, key: String, index: usize, round: usize, ledger: Arc<Mutex<Ledger>>) {
    let http = reqwest::Client::new();
    let mut mine: Vec<String> = Vec::new();
    let mut rng = fastrand::Rng::with_seed((round * 1000 + index) as u64);
    for step in 0.. {
        let text = format!("round {round} writer {index} step {step} note {}", rng.u32(..));
        let choice = if mine.is_empty() { 0 } else { rng.u8(..10) };
        let (item, outcome) = match choice {
            0..=4 => {
                let args = json!({"session_id": "crash", "content": text});
                match call(&http, &base, &key, "store_context", args).await {
                    Ok(body) => {
                        let id = body["context"]["id"].as_str().unwrap().to_string();
                        mine.push(id.clone());
                        (id, Some(Acked::Present(text)))
                    }
                    Err(Some(code)) => panic!("store_context failed with {code}"),
                    Err(None) => return, // killed: the write may or may not have landed; it was never acked
                }
            }
            5..=6 => {
                let id = mine[rng.usize(..mine.len())].clone();
                match call(&http, &base, &key, "update_context", json!({"id": id, "content": text})).await {
                    Ok(_) => (id, Some(Acked::Present(text))),
                    Err(Some(code)) => panic!("update_context failed with {code}"),
                    Err(None) => (id, None),
                }
            }
            7 => {
                let id = mine.swap_remove(rng.usize(..mine.len()));
                match call(&http, &base, &key, "delete_context", json!({"id": id})).await {
                    Ok(_) => (id, Some(Acked::Deleted)),
                    Err(Some(code)) => panic!("delete_context failed with {code}"),
                    Err(None) => (id, None),
                }
            }
            _ => {
                let state_key = format!("r{round}-w{index}");
                let args = json!({"key": state_key, "value": step});
                match call(&http, &base, &key, "set_agent_state", args).await {
                    Ok(_) => {
                        ledger.lock().unwrap().states.insert(state_key, step);
                        continue;
                    }
                    Err(Some(code)) => panic!("set_agent_state failed with {code}"),
                    Err(None) => {
                        ledger.lock().unwrap().uncertain.insert(state_key);
                        return;
                    }
                }
            }
        };
        let mut ledger = ledger.lock().unwrap();
        match outcome {
            Some(acked) => {
                ledger.contexts.insert(item, acked);
            }
            None => {
                ledger.uncertain.insert(item);
                return;
            }
        }
    }
}

async fn verify(server: &ServerProcess, key: &str, ledger: &Ledger, round: usize) {
    let http = reqwest::Client::new();
    let mut present = Vec::new();
    for (id, acked) in &ledger.contexts {
        if ledger.uncertain.contains(id) {
            continue;
        }
        let got = call(&http, &server.base, key, "get_context", json!({"id": id})).await;
        match (acked, got) {
            (Acked::Present(text), Ok(body)) => {
                assert_eq!(body["context"]["content"].as_str(), Some(text.as_str()), "round {round}: {id}");
                present.push(text.clone());
            }
            (Acked::Deleted, Err(Some(code))) => assert!(code.starts_with("not_found"), "round {round}: {id}: {code}"),
            (acked, got) => panic!("round {round}: {id} acknowledged {acked:?}, found {got:?}"),
        }
    }
    for (state_key, value) in &ledger.states {
        if ledger.uncertain.contains(state_key) {
            continue;
        }
        let got = call(&http, &server.base, key, "get_agent_state", json!({"key": state_key})).await.unwrap();
        assert_eq!(got["state"]["value"], json!(value), "round {round}: state {state_key}");
    }
    let metrics = call(&http, &server.base, key, "get_metrics", json!({})).await.unwrap();
    let items = &metrics["items"];
    assert_eq!(items["contexts"], items["vectors"], "round {round}: graph and vectors hold the same items");
    assert_eq!(items["pending_index"], json!(0), "round {round}: start-up repair cleared the journal");
    for text in present.iter().step_by((present.len() / 4).max(1)) {
        let args = json!({"query": text, "session_id": "crash", "limit": 5});
        let hits = call(&http, &server.base, key, "search_context", args).await.unwrap();
        let found = hits["hits"].as_array().unwrap().iter().any(|h| h["context"]["content"].as_str() == Some(text));
        assert!(found, "round {round}: '{text}' is not found by search");
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9_of_the_server_under_128_writers() {
    let rounds: usize = std::env::var("CTX_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let key = admin_key_in(dir.path()).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = fastrand::Rng::with_seed(99);
    for round in 0..rounds {
        let (server, ready) = ServerProcess::start(dir.path(), &[("CTX__GRAPH__SYNCHRONOUS", "normal")]).await;
        eprintln!("crash test: round {round}: ready {:.2} s after start", ready.as_secs_f64());
        if round == 0 {
            let session = json!({"id": "crash", "purpose": "crash test"});
            call(&reqwest::Client::new(), &server.base, &key, "create_session", session).await.unwrap();
        } else {
            let view = ledger.lock().unwrap().clone_view();
            verify(&server, &key, &view, round).await;
        }
        let tasks: Vec<_> = (0..WRITERS)
            .map(|index| tokio::spawn(writer(server.base.clone(), key.clone(), index, round, ledger.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(700 + rng.u64(..1300))).await;
        drop(server); // SIGKILL
        for task in tasks {
            task.await.expect("a writer saw a tool error");
        }
    }
    let (server, ready) = ServerProcess::start(dir.path(), &[("CTX__GRAPH__SYNCHRONOUS", "normal")]).await;
    eprintln!("crash test: final restart: ready {:.2} s after start", ready.as_secs_f64());
    let ledger = ledger.lock().unwrap().clone_view();
    let deleted = ledger.contexts.values().filter(|a| **a == Acked::Deleted).count();
    eprintln!(
        "crash test: {rounds} kills; acknowledged {} contexts ({deleted} deleted), {} agent states; {} in flight at a kill",
        ledger.contexts.len(),
        ledger.states.len(),
        ledger.uncertain.len()
    );
    assert!(ledger.contexts.len() > WRITERS, "the writers acknowledged too little to test: {}", ledger.contexts.len());
    verify(&server, &key, &ledger, rounds).await;
}

impl Ledger {
    fn clone_view(&self) -> Ledger {
        Ledger { contexts: self.contexts.clone(), states: self.states.clone(), uncertain: self.uncertain.clone() }
    }
}
