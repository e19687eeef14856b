// Undo of an update whose vector write failed: the previous state and its embedding come back, and the version
// node written by the update goes.
MATCH (c:Context {id: $id})
SET c = $props
WITH c
OPTIONAL MATCH (c)-[:SUPERSEDES]->(v:ContextVersion {version: $version})
DETACH DELETE v
WITH DISTINCT c
OPTIONAL MATCH (c)-[old:TAGGED]->(:Tag)
DELETE old
WITH DISTINCT c
FOREACH (name IN $tags | MERGE (t:Tag {name: name}) CREATE (c)-[:TAGGED]->(t))
RETURN c.id AS id
