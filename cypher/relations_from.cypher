// The RELATES_TO edges leaving each of $ids (export).
UNWIND $ids AS id
MATCH (a:Context {id: id})-[r:RELATES_TO]->(b:Context)
RETURN a.id AS from_id, b.id AS to_id, r.relation AS relation, r.metadata AS metadata, r.created_at AS created_at,
       coalesce(r.created_by, '') AS created_by
ORDER BY from_id, relation, to_id
