//! query_graph: analysts' read-only queries in the store's own language (SQL on SQLite, Cypher on Neo4j),
//! with parameters, a row limit and a timeout; writes are refused and change nothing.

use context_store::auth::{Permissions, Principal};
use context_store::error::ErrorCode;
use context_store::service::QueryGraphRequest;
use serde_json::{Value, json};

use crate::helpers::{TestCore, graph_under_test};

/// The same question in both languages; columns are named so that both list them in one order.
fn per_language(sql: &str, cypher: &str) -> String {
    match graph_under_test() {
        "neo4j" => cypher.to_string(),
        _ => sql.to_string(),
    }
}

fn request(query: String, params: Value) -> QueryGraphRequest {
    QueryGraphRequest { query, params: params.as_object().cloned().unwrap_or_default(), ..Default::default() }
}

#[tokio::test]
async fn analysts_query_the_graph_read_only_with_parameters_limits_and_timeouts() {
    let app = TestCore::start().await;
    for session in ["alpha", "beta"] {
        app.session(session).await;
    }
    app.store("alpha", "ann", "the build is green again").await;
    app.store("alpha", "bob", "deploy after lunch").await;
    app.store("beta", "ann", "rotate the keys").await;
    let service = app.service();
    let admin = Principal::admin("analyst");

    let description = service.query_graph_description();
    let language = if graph_under_test() == "neo4j" { "cypher" } else { "sql" };
    assert!(description.contains(&format!("Language: {language}")), "{description}");
    assert!(description.contains("contexts(") || description.contains(":Context"), "the schema is summarised");

    let counts = per_language(
        "SELECT count(*) AS n, session_id AS session FROM contexts WHERE deleted = 0 GROUP BY session_id ORDER BY session_id",
        "MATCH (c:Context) WHERE NOT c.deleted RETURN count(c) AS n, c.session_id AS session ORDER BY session",
    );
    let answer = service.query_graph(&admin, request(counts, json!({}))).await.unwrap();
    assert_eq!(answer.language, language);
    assert_eq!(answer.result.columns, ["n", "session"]);
    assert_eq!(answer.result.rows, [vec![json!(2), json!("alpha")], vec![json!(1), json!("beta")]]);
    assert!(!answer.result.truncated);

    let by_author = per_language(
        "SELECT content FROM contexts WHERE agent_id = :author ORDER BY content",
        "MATCH (c:Context {agent_id: $author}) RETURN c.content AS content ORDER BY content",
    );
    let mut limited = request(by_author, json!({"author": "ann"}));
    limited.limit = Some(1);
    let answer = service.query_graph(&admin, limited).await.unwrap();
    assert_eq!(answer.result.rows, [vec![json!("rotate the keys")]]);
    assert!(answer.result.truncated, "a second row matched");

    // Writes are refused by the store itself and change nothing.
    let write = per_language("DELETE FROM contexts", "MATCH (c:Context) DETACH DELETE c");
    let refused = service.query_graph(&admin, request(write, json!({}))).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InvalidArgument, "{refused}");
    assert_eq!(service.graph().counts().await.unwrap().contexts, 3);

    let endless = per_language(
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r",
        "UNWIND range(1, 2000000000) AS i WITH i WHERE i < 0 RETURN count(i) AS n",
    );
    let mut slow = request(endless, json!({}));
    slow.timeout_ms = Some(300);
    let stopped = service.query_graph(&admin, slow).await.unwrap_err();
    assert_eq!(stopped.code(), ErrorCode::InvalidArgument, "{stopped}");

    let broken = service.query_graph(&admin, request("SELEKT nonsense".into(), json!({}))).await.unwrap_err();
    assert_eq!(broken.code(), ErrorCode::InvalidArgument);
    let empty = service.query_graph(&admin, request("  ".into(), json!({}))).await.unwrap_err();
    assert_eq!(empty.code(), ErrorCode::InvalidArgument);
    let mut huge = request("RETURN 1".into(), json!({}));
    huge.limit = Some(1_000_000);
    assert_eq!(service.query_graph(&admin, huge).await.unwrap_err().code(), ErrorCode::InvalidArgument);

    let reader = Principal {
        permissions: Permissions { read: true, write: true, query: false, admin: false },
        ..Principal::admin("writer")
    };
    let denied = service.query_graph(&reader, request("SELECT 1".into(), json!({}))).await.unwrap_err();
    assert_eq!(denied.code(), ErrorCode::PermissionDenied);
}

/// A caller limited by key: agent id, permissions and optional sessions (like the security matrix's).
fn caller(agent: &str, permissions: &str, sessions: Option<&[&str]>) -> Principal {
    Principal {
        agent_id: agent.into(),
        agent_type: "test".into(),
        permissions: Permissions::parse(permissions).unwrap(),
        sessions: sessions.map(|s| s.iter().map(|id| id.to_string()).collect()),
        trusted: false,
    }
}

async fn sql(service: &context_store::service::ContextService, who: &Principal, query: &str) -> Vec<Vec<Value>> {
    match service.query_graph(who, request(query.into(), json!({}))).await {
        Ok(answer) => answer.result.rows,
        Err(err) => panic!("{} ran `{query}`: {err}", who.agent_id),
    }
}

fn texts(rows: Vec<Vec<Value>>) -> Vec<String> {
    let mut found: Vec<String> = rows.into_iter().map(|row| row[0].as_str().unwrap_or_default().to_string()).collect();
    found.sort();
    found
}

/// The world of the scope tests: sessions s1 and s2; alice's public and private contexts (one a private
/// draft later made public), bob's private one, an admin_only one, a public one in s2; relations into the
/// hidden ones; agent state of alice and bob.
async fn scoped_world(app: &TestCore) {
    use context_store::domain::Visibility;
    use context_store::service::{SetAgentStateRequest, StoreContextRequest, UpdateContextRequest};
    for session in ["s1", "s2"] {
        app.session(session).await;
    }
    let service = app.service();
    let trusted = Principal::local_trusted("setup");
    let admin = Principal::admin("root");
    let store = |agent: &str, session: &str, content: &str, visibility: Visibility| StoreContextRequest {
        session_id: session.into(),
        content: content.into(),
        visibility: Some(visibility),
        agent_id: Some(agent.into()),
        ..Default::default()
    };
    let id = |r: context_store::service::StoreContextResponse| r.context.id.to_string();
    let public = id(service
        .store_context(&trusted, store("alice", "s1", "alice public note", Visibility::Public))
        .await
        .unwrap());
    service.store_context(&trusted, store("alice", "s1", "alice private note", Visibility::Private)).await.unwrap();
    let draft = id(service
        .store_context(&trusted, store("alice", "s1", "alice secret draft", Visibility::Private))
        .await
        .unwrap());
    let update = UpdateContextRequest {
        id: draft.clone(),
        content: Some("alice published text".into()),
        visibility: Some(Visibility::Public),
        agent_id: Some("alice".into()),
        ..Default::default()
    };
    service.update_context(&trusted, update).await.unwrap();
    let bobs =
        id(service.store_context(&trusted, store("bob", "s1", "bob private note", Visibility::Private)).await.unwrap());
    service.store_context(&admin, store("root", "s1", "payroll admin only", Visibility::AdminOnly)).await.unwrap();
    service.store_context(&trusted, store("carol", "s2", "carol public in s2", Visibility::Public)).await.unwrap();
    let link = |from: &str, to: &str| context_store::service::LinkContextsRequest {
        from_id: from.into(),
        to_id: to.into(),
        relation: "see_also".into(),
        ..Default::default()
    };
    service.link_contexts(&admin, link(&public, &bobs)).await.unwrap();
    service.link_contexts(&admin, link(&public, &draft)).await.unwrap();
    for agent in ["alice", "bob"] {
        let state: SetAgentStateRequest = serde_json::from_value(
            json!({"key": format!("{agent}-plan"), "value": {"owner": agent}, "agent_id": agent}),
        )
        .unwrap();
        service.set_agent_state(&trusted, state).await.unwrap();
    }
}

#[tokio::test]
async fn analyst_sql_sees_exactly_what_the_callers_read_scope_allows() {
    if graph_under_test() == "neo4j" {
        return; // On Neo4j analyst queries are admin-only: see the next test.
    }
    let app = TestCore::start().await;
    scoped_world(&app).await;
    let service = app.service();
    let analyst = caller("analyst", "query", None);
    let alice = caller("alice", "read,query", Some(&["s1"]));
    let carol = caller("carol", "query", Some(&["s2"]));
    let admin = Principal::admin("root");

    let contents = "SELECT content FROM contexts";
    assert_eq!(
        texts(sql(service, &analyst, contents).await),
        ["alice public note", "alice published text", "carol public in s2"],
        "a query-only key sees public contexts only: no private, no admin_only"
    );
    assert_eq!(
        texts(sql(service, &alice, contents).await),
        ["alice private note", "alice public note", "alice published text"],
        "alice sees her own private contexts, and only in s1"
    );
    assert_eq!(texts(sql(service, &carol, contents).await), ["carol public in s2"]);
    assert_eq!(sql(service, &admin, "SELECT count(*) FROM contexts").await, [vec![json!(6)]], "admins see all");

    assert_eq!(texts(sql(service, &alice, "SELECT id FROM sessions").await), ["s1"]);
    let versions = "SELECT content FROM context_versions";
    assert!(sql(service, &analyst, versions).await.is_empty(), "the private draft stays private");
    assert_eq!(texts(sql(service, &alice, versions).await), ["alice secret draft"], "its author sees it");
    let links =
        sql(service, &analyst, "SELECT r.to_id, c.content FROM relations r JOIN contexts c ON c.id = r.to_id").await;
    assert_eq!(links.len(), 1, "only the link between two visible contexts: {links:?}");
    assert_eq!(links[0][1], json!("alice published text"));
    assert_eq!(texts(sql(service, &alice, "SELECT key FROM agent_state").await), ["alice-plan"], "own state only");
    assert!(sql(service, &analyst, "SELECT key FROM agent_state").await.is_empty());
    assert_eq!(sql(service, &admin, "SELECT count(*) FROM agent_state").await, [vec![json!(2)]]);
    sql(service, &admin, "SELECT seq FROM index_journal").await; // admins read every table

    // The tables themselves are out of reach, however the query names them.
    for escape in [
        "SELECT content FROM main.contexts",
        "SELECT content FROM \"main\".\"contexts\"",
        "WITH contexts AS (SELECT * FROM main.contexts) SELECT content FROM contexts",
        "WITH RECURSIVE r(c) AS (SELECT content FROM main.contexts) SELECT c FROM r",
        "SELECT * FROM (SELECT content FROM main.contexts)",
        "SELECT seq FROM index_journal",
        "SELECT count(*) FROM index_journal",
        "SELECT count(*) FROM sqlite_sequence",
        "SELECT count(*) FROM dbstat",
        "SELECT embedding FROM contexts",
        "SELECT value FROM main.agent_state",
        "SELECT * FROM pragma_table_info('contexts')",
        "SELECT * FROM dbstat",
    ] {
        let refused = service.query_graph(&analyst, request(escape.into(), json!({}))).await;
        let err = refused.expect_err(escape);
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{escape}: {err}");
    }
    // A permitted JSON table function and a recursive CTE still work for scoped callers.
    let tags = sql(service, &analyst, "SELECT count(*) FROM contexts, json_each(contexts.tags)").await;
    assert_eq!(tags, [vec![json!(0)]]);
    let counted = sql(
        service,
        &analyst,
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 5) SELECT count(*) FROM r",
    )
    .await;
    assert_eq!(counted, [vec![json!(5)]]);
}

#[tokio::test]
async fn analyst_queries_cannot_change_exhaust_or_outlive_their_request() {
    let app = TestCore::start().await;
    app.session("s1").await;
    app.store("s1", "ann", "a context that must stay readable").await;
    let service = app.service();
    let admin = Principal::admin("root");
    let neo4j = graph_under_test() == "neo4j";

    let refused: &[&str] = if neo4j {
        &[
            "LOAD CSV FROM \"file:///etc/hostname\" AS row RETURN row",
            "CALL dbms.components()",
            "CALL dbms.listConfig()",
            "USE system SHOW USERS",
            "SHOW TRANSACTIONS",
            "CREATE (n:Evil) RETURN n",
            "MATCH (c:Context) SET c.content = 'x' RETURN c",
        ]
    } else {
        &[
            "PRAGMA hard_heap_limit=1",
            "PRAGMA soft_heap_limit=1",
            "PRAGMA temp_store_directory='/tmp'",
            "SELECT * FROM pragma_hard_heap_limit(1)",
            "ATTACH DATABASE 'keys.sqlite3' AS k",
            "SELECT load_extension('/tmp/evil')",
            "SELECT fts3_tokenizer('simple')",
            "SELECT zeroblob(400000000)",
            "SELECT randomblob(400000000)",
            "DELETE FROM contexts",
            "CREATE TEMP TABLE t(x)",
            "BEGIN",
            ";",
            "-- only a comment",
        ]
    };
    for query in refused {
        let err = service.query_graph(&admin, request(query.to_string(), json!({}))).await.expect_err(query);
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{query}: {err}");
        if query.starts_with(';') || query.starts_with("--") {
            assert!(err.to_string().contains("no SQL statement"), "{query}: {err}");
        }
    }
    // The store is untouched and keeps working: writes, reads, readiness.
    app.store("s1", "ann", "written after the refused queries").await;
    assert_eq!(service.graph().counts().await.unwrap().contexts, 2);
    assert!(service.ready().await.ready);
    if neo4j {
        let labels =
            service.query_graph(&admin, request("CALL db.labels() YIELD label RETURN label".into(), json!({})));
        assert!(!labels.await.unwrap().result.rows.is_empty(), "schema procedures stay allowed");
        // Neo4j Community cannot scope a query to a caller: analyst Cypher is for admins.
        let analyst = caller("analyst", "query", None);
        let denied = service.query_graph(&analyst, request("MATCH (c:Context) RETURN c.content".into(), json!({})));
        assert_eq!(denied.await.unwrap_err().code(), ErrorCode::PermissionDenied);
    } else {
        // One value is capped, and so is the whole answer (2 000 rows of 200 kB would be 400 MB).
        let big_value = "SELECT printf('%.*c', 400000000, 'x')";
        let err = service.query_graph(&admin, request(big_value.into(), json!({}))).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
        let big_answer = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 2000) \
                          SELECT printf('%.*c', 200000, 'x') FROM r";
        let mut many = request(big_answer.into(), json!({}));
        many.limit = Some(10_000);
        let err = service.query_graph(&admin, many).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
        // So is the working memory of one statement: an endless sort of large rows (which once spilled to
        // temporary files at hundreds of MB/s) stops on memory, long before its timeout.
        let endless_sort = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) \
                            SELECT x, printf('%.*c', 200000, 'a') FROM r ORDER BY x DESC";
        let mut sort = request(endless_sort.into(), json!({}));
        sort.timeout_ms = Some(60_000);
        let err = service.query_graph(&admin, sort).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
        assert!(err.to_string().contains("working memory"), "{err}");
        // The answer cap counts bytes as JSON writes them: a control character takes six.
        let escaped = "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 80) \
                       SELECT printf('%.*c', 200000, char(1)) FROM r";
        let mut escaped = request(escaped.into(), json!({}));
        escaped.limit = Some(10_000);
        let err = service.query_graph(&admin, escaped).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::PayloadTooLarge, "{err}");
    }

    // A query whose request is dropped stops: its work ends long before its own 60 s timeout.
    let endless = if neo4j {
        "UNWIND range(1, 2000000000) AS i WITH i WHERE i < 0 RETURN count(i) AS n"
    } else {
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
    };
    let running = || service.metrics().analyst_queries_running.get();
    let mut tasks = Vec::new();
    for _ in 0..context_store::service::analytics::MAX_CONCURRENT_QUERIES {
        let (service, admin) = (service.clone(), admin.clone());
        let mut slow = request(endless.into(), json!({}));
        slow.timeout_ms = Some(60_000);
        tasks.push(tokio::spawn(async move { service.query_graph(&admin, slow).await }));
    }
    let started = std::time::Instant::now();
    while running() < context_store::service::analytics::MAX_CONCURRENT_QUERIES as i64 {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the queries did not start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let one = if neo4j { "RETURN 1 AS one" } else { "SELECT 1" };
    let busy = service.query_graph(&admin, request(one.into(), json!({}))).await;
    assert_eq!(busy.unwrap_err().code(), ErrorCode::ResourceExhausted, "every analyst slot is taken");
    for task in &tasks {
        task.abort();
    }
    while running() > 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(40), "dropped queries kept running");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let after = service.query_graph(&admin, request(one.into(), json!({}))).await;
    assert!(after.is_ok(), "the slots are free again: {after:?}");
}
