// Keeps the current state as a SUPERSEDES version node, then writes the new state (all properties, so stale
// metadata keys go) and its tags. $props carries no _lock: the lock property is gone afterwards.
MATCH (c:Context {id: $id})
MERGE (v:ContextVersion {context_id: $id, version: c.version})
SET v.type = c.type, v.content = c.content, v.tags = c.tags, v.metadata = c.metadata,
    v.visibility = c.visibility, v.updated_at = c.updated_at, v.content_hash = c.content_hash
MERGE (c)-[:SUPERSEDES]->(v)
SET c = $props
WITH c
OPTIONAL MATCH (c)-[old:TAGGED]->(:Tag)
DELETE old
WITH DISTINCT c
FOREACH (name IN $tags | MERGE (t:Tag {name: name}) CREATE (c)-[:TAGGED]->(t))
RETURN c.id AS id
