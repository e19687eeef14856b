use super::rows::*;
use super::{Neo4jGraphStore, TxResult, cypher, query, rows};
use crate::domain::{ReadScope, Relation, Timestamp};
use crate::error::{StoreError, StoreResult};
use crate::store::graph::{RelatedContext, RelatedWalk, RelationGraph};
use async_trait::async_trait;
use uuid::Uuid;

#[async_trait]
impl RelationGraph for Neo4jGraphStore {
    async fn link(&self, relation: &Relation) -> StoreResult<()> {
        transaction!(self, |txn| {
            let statement = query(cypher::RELATION_LINK)
                .param("from_id", relation.from_id.to_string())
                .param("to_id", relation.to_id.to_string())
                .param("relation", relation.relation.clone())
                .param("metadata", json_text(&relation.metadata))
                .param("created_at", relation.created_at.millis())
                .param("created_by", relation.created_by.clone());
            let found = rows(txn, statement).await?;
            let linked: i64 = match found.first() {
                Some(row) => row.get("linked")?,
                None => 0,
            };
            if linked == 0 {
                return Err(StoreError::NotFound.into());
            }
            Ok(())
        })
    }

    async fn related(
        &self,
        id: Uuid,
        depth: u32,
        relation: Option<&str>,
        both_directions: bool,
        max_nodes: usize,
        scope: &ReadScope,
    ) -> StoreResult<Vec<RelatedContext>> {
        read!(self, |txn| {
            let mut walk = RelatedWalk::new(id, max_nodes, scope.clone());
            for level in 1..=depth {
                if walk.frontier().is_empty() {
                    break;
                }
                let statement = query(cypher::RELATION_STEP)
                    .param("ids", walk.frontier().iter().map(Uuid::to_string).collect::<Vec<_>>())
                    .param("both", both_directions)
                    .param("relation", relation.map(str::to_string))
                    .param("limit", walk.edge_budget() as i64);
                let edges = rows(txn, statement)
                    .await?
                    .iter()
                    .map(|row| {
                        let from = parse_uuid(&row.get::<String>("from_id")?)?;
                        Ok((from, parse_uuid(&row.get::<String>("to_id")?)?, row.get::<String>("relation")?))
                    })
                    .collect::<TxResult<Vec<_>>>()?;
                walk.absorb(level, edges);
                walk.settle(live_contexts(txn, &walk.level_ids()).await?);
            }
            Ok(walk.finish())
        })
    }

    async fn neighbours(
        &self,
        ids: &[Uuid],
        per_node: usize,
        scope: &ReadScope,
    ) -> StoreResult<Vec<(Uuid, RelatedContext)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = Timestamp::now();
        read!(self, |txn| {
            let statement = query(cypher::RELATION_NEIGHBOURS)
                .param("ids", ids.iter().map(Uuid::to_string).collect::<Vec<_>>())
                .param("per_node", per_node as i64);
            let statement = scope_params(statement, scope, now);
            rows(txn, statement)
                .await?
                .iter()
                .map(|row| {
                    let start = parse_uuid(&row.get::<String>("start")?)?;
                    let context = context_of(row)?;
                    let relation: String = row.get("relation")?;
                    Ok((start, RelatedContext { context, depth: 1, relation, via: start }))
                })
                .collect()
        })
    }

    async fn relations_from(&self, ids: &[Uuid]) -> StoreResult<Vec<Relation>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, |txn| {
            let statement =
                query(cypher::RELATIONS_FROM).param("ids", ids.iter().map(Uuid::to_string).collect::<Vec<_>>());
            rows(txn, statement)
                .await?
                .iter()
                .map(|row| {
                    Ok(Relation {
                        from_id: parse_uuid(&row.get::<String>("from_id")?)?,
                        to_id: parse_uuid(&row.get::<String>("to_id")?)?,
                        relation: row.get("relation")?,
                        metadata: serde_json::from_str(&row.get::<String>("metadata")?).map_err(StoreError::from)?,
                        created_at: Timestamp(row.get("created_at")?),
                        created_by: row.get("created_by")?,
                    })
                })
                .collect()
        })
    }
}
