use super::SqliteGraphStore;
use super::rows::*;
use crate::domain::{ReadScope, Relation, Timestamp};
use crate::error::{StoreError, StoreResult};
use crate::store::graph::{RelatedContext, RelatedWalk, RelationGraph};
use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter};
use uuid::Uuid;

#[async_trait]
impl RelationGraph for SqliteGraphStore {
    async fn link(&self, relation: &Relation) -> StoreResult<()> {
        let relation = relation.clone();
        self.write(move |tx| {
            let live: i64 = tx.query_row(
                "SELECT COUNT(*) FROM contexts WHERE deleted = 0 AND id IN (?1, ?2)",
                params![relation.from_id.to_string(), relation.to_id.to_string()],
                |row| row.get(0),
            )?;
            let expected = if relation.from_id == relation.to_id { 1 } else { 2 };
            if live != expected {
                return Err(StoreError::NotFound);
            }
            tx.execute(
                "INSERT INTO relations (from_id, to_id, relation, metadata, created_at, created_by) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(from_id, relation, to_id) \
                 DO UPDATE SET metadata = excluded.metadata, created_by = excluded.created_by",
                params![
                    relation.from_id.to_string(),
                    relation.to_id.to_string(),
                    relation.relation,
                    json_text(&relation.metadata),
                    relation.created_at.millis(),
                    relation.created_by
                ],
            )?;
            Ok(())
        })
        .await
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
        let relation = relation.map(str::to_string);
        let scope = scope.clone();
        self.read(move |conn| {
            let mut walk = RelatedWalk::new(id, max_nodes, scope);
            for level in 1..=depth {
                if walk.frontier().is_empty() {
                    break;
                }
                let ids: Vec<String> = walk.frontier().iter().map(Uuid::to_string).collect();
                let marks = placeholders(ids.len());
                let mut sql = format!("SELECT from_id, to_id, relation FROM relations WHERE from_id IN ({marks})");
                let mut values: Vec<SqlValue> = ids.iter().cloned().map(SqlValue::from).collect();
                if both_directions {
                    sql = format!(
                        "SELECT from_id, to_id, relation FROM relations WHERE from_id IN ({marks}) \
                         UNION ALL SELECT to_id, from_id, relation FROM relations WHERE to_id IN ({marks})"
                    );
                    values.extend(ids.iter().cloned().map(SqlValue::from));
                }
                let sql = match &relation {
                    Some(name) => {
                        values.push(name.clone().into());
                        format!("SELECT * FROM ({sql}) WHERE relation = ? GROUP BY 2 ORDER BY 2 LIMIT ?")
                    }
                    None => format!("SELECT * FROM ({sql}) GROUP BY 2 ORDER BY 2 LIMIT ?"),
                };
                values.push((walk.edge_budget() as i64).into());
                let mut statement = conn.prepare(&sql)?;
                let edges = statement
                    .query_map(params_from_iter(values.iter()), |row| {
                        Ok((
                            parse_uuid(&row.get::<_, String>(0)?)?,
                            parse_uuid(&row.get::<_, String>(1)?)?,
                            row.get::<_, String>(2)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                walk.absorb(level, edges);
                walk.settle(live_by_ids(conn, "", &walk.level_ids(), context_from_row)?);
            }
            Ok(walk.finish())
        })
        .await
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
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let scope = scope.clone();
        self.read(move |conn| {
            let marks = placeholders(ids.len());
            let mut values: Vec<SqlValue> = ids.iter().chain(ids.iter()).cloned().map(SqlValue::from).collect();
            // Hidden and deleted neighbours are dropped before the per-node ranking, so they cannot crowd
            // visible ones out.
            let mut visible = vec!["c.deleted = 0".to_string()];
            scope_sql(&scope, Timestamp::now(), &mut visible, &mut values);
            let sql = format!(
                "WITH edges(start, other, relation) AS ( \
                   SELECT from_id, to_id, relation FROM relations WHERE from_id IN ({marks}) \
                   UNION SELECT to_id, from_id, relation FROM relations WHERE to_id IN ({marks})), \
                 ranked AS (SELECT e.start AS start, e.other AS other, e.relation AS relation, \
                   ROW_NUMBER() OVER (PARTITION BY e.start ORDER BY e.other) AS n \
                   FROM edges e JOIN contexts c ON c.id = e.other WHERE {}) \
                 SELECT r.start, r.relation, {CONTEXT_COLUMNS} FROM ranked r \
                 JOIN contexts c ON c.id = r.other WHERE r.n <= ? ORDER BY r.start, r.n",
                visible.join(" AND ")
            );
            values.push((per_node as i64).into());
            let mut statement = conn.prepare(&sql)?;
            let rows = statement.query_map(params_from_iter(values.iter()), |row| {
                let start = parse_uuid(&row.get::<_, String>(0)?)?;
                let relation: String = row.get(1)?;
                let context = context_from_row_at(row, 2)?;
                Ok((start, RelatedContext { context, depth: 1, relation, via: start }))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn relations_from(&self, ids: &[Uuid]) -> StoreResult<Vec<Relation>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        self.read(move |conn| {
            let mut found = Vec::new();
            for chunk in ids.chunks(500) {
                let sql = format!(
                    "SELECT from_id, to_id, relation, metadata, created_at, created_by FROM relations \
                     WHERE from_id IN ({}) \
                     ORDER BY from_id, relation, to_id",
                    placeholders(chunk.len())
                );
                let mut statement = conn.prepare_cached(&sql)?;
                let rows = statement.query_map(params_from_iter(chunk.iter()), |row| {
                    Ok(Relation {
                        from_id: parse_uuid(&row.get::<_, String>(0)?)?,
                        to_id: parse_uuid(&row.get::<_, String>(1)?)?,
                        relation: row.get(2)?,
                        metadata: parse_json(&row.get::<_, String>(3)?)?,
                        created_at: Timestamp(row.get(4)?),
                        created_by: row.get(5)?,
                    })
                })?;
                for row in rows {
                    found.push(row?);
                }
            }
            Ok(found)
        })
        .await
    }
}
