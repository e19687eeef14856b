use super::{Neo4jGraphStore, query, store_error};
use crate::error::{StoreError, StoreResult};
use crate::store::graph::{AnalystGraph, AnalystRequest, AnswerSize, QueryRows};
use async_trait::async_trait;
use neo4rs::BoltType;
use serde_json::Value;
use std::time::Duration;

#[async_trait]
impl AnalystGraph for Neo4jGraphStore {
    fn query_language(&self) -> &'static str {
        "cypher"
    }

    fn query_schema(&self) -> String {
        self.schema.clone()
    }

    /// Neo4j Community has no per-user graph scoping, so analyst Cypher sees the whole graph: the service
    /// runs it for admins only.
    fn scoped_analyst_queries(&self) -> bool {
        false
    }

    async fn analyst_query(&self, request: AnalystRequest<'_>) -> StoreResult<QueryRows> {
        let AnalystRequest { query: text, params, limit, timeout, ticket: _ticket, .. } = request;
        super::cypher_guard::check(text).map_err(StoreError::InvalidQuery)?;
        let mut statement = query(text).extra("tx_timeout", timeout.as_millis() as i64);
        for (name, value) in params {
            let value = BoltType::try_from(value.clone())
                .map_err(|e| StoreError::InvalidQuery(format!("parameter {name}: {e}")))?;
            statement = statement.param(name, value);
        }
        let rejected = |err: neo4rs::Error| match &err {
            neo4rs::Error::Neo4j(e) if e.code().starts_with("Neo.ClientError") => {
                StoreError::InvalidQuery(format!("{}: {}", e.code(), e.message()))
            }
            _ => store_error(err),
        };
        let run = async {
            let _permit = self.permit().await?;
            // A READ transaction: the server refuses write clauses.
            let mut stream = self.graph.execute_read(statement).await.map_err(rejected)?;
            let mut found = QueryRows::default();
            let mut answer = AnswerSize::default();
            while let Some(row) = stream.next().await.map_err(rejected)? {
                if found.rows.len() == limit {
                    found.truncated = true;
                    break;
                }
                if found.columns.is_empty() {
                    found.columns = row.keys().into_iter().map(|k| k.value.clone()).collect();
                    found.columns.sort();
                }
                let values = found.columns.iter().map(|c| row.get::<Value>(c)).collect::<Result<Vec<_>, _>>();
                let values = values.map_err(|e| StoreError::Backend(format!("unreadable row: {e}")))?;
                answer.add(&values)?;
                found.rows.push(values);
            }
            stream.finish().await.map_err(rejected)?;
            Ok(found)
        };
        // The server stops the transaction at `tx_timeout`; past that and a grace second the query counts as
        // answered-too-slow (not as the backend being unreachable), a little later as unreachable.
        let deadline = timeout + Duration::from_secs(1);
        let answered = async {
            tokio::time::timeout(deadline, run).await.unwrap_or_else(|_| {
                Err(StoreError::InvalidQuery(format!("the query ran longer than {} ms", timeout.as_millis())))
            })
        };
        self.breaker.call(deadline + self.options.call_timeout, answered).await
    }
}
