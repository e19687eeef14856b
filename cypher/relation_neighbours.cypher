// The live direct neighbours (both directions) of each of $ids, at most $per_node each, in one round trip.
UNWIND $ids AS id
MATCH (a:Context {id: id})-[r:RELATES_TO]-(c:Context)
WHERE NOT c.deleted
WITH id, r.relation AS relation, c
ORDER BY id, c.id
WITH id, collect({relation: relation, context: c {.id, .session_id, .agent_id, .type, .content, .tags, .metadata,
     .visibility, .created_at, .updated_at, .version, .expires_at, .content_hash}})[..$per_node] AS found
UNWIND found AS hit
RETURN id AS start, hit.relation AS relation, hit.context AS context
