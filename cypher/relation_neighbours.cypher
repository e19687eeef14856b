// The live direct neighbours (both directions) of each of $ids that the caller may see, at most $per_node each,
// in one round trip. Hidden neighbours are dropped before the limit, so they cannot crowd visible ones out.
UNWIND $ids AS id
MATCH (a:Context {id: id})-[r:RELATES_TO]-(c:Context)
WHERE NOT c.deleted
  AND ($admin OR c.visibility = 'public' OR (c.visibility = 'private' AND c.agent_id = $agent_id))
  AND ($sessions IS NULL OR c.session_id IN $sessions)
  AND (c.expires_at IS NULL OR c.expires_at > $now)
WITH id, r.relation AS relation, c
ORDER BY id, c.id
WITH id, collect({relation: relation, context: c {.id, .session_id, .agent_id, .type, .content, .tags, .metadata,
     .visibility, .created_at, .updated_at, .version, .expires_at, .content_hash}})[..$per_node] AS found
UNWIND found AS hit
RETURN id AS start, hit.relation AS relation, hit.context AS context
