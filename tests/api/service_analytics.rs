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
