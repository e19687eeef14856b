// Undo of an update whose vector write failed: the previous state comes back (the embedding stays as it is,
// as in the embedded store) and the version node written by the update goes.
MATCH (c:Context {id: $id})
WITH c, c.embedding AS embedding
SET c = $props, c.embedding = embedding
WITH c
OPTIONAL MATCH (c)-[:SUPERSEDES]->(v:ContextVersion {version: $version})
DETACH DELETE v
WITH DISTINCT c
OPTIONAL MATCH (c)-[old:TAGGED]->(:Tag)
DELETE old
WITH DISTINCT c
FOREACH (name IN $tags | MERGE (t:Tag {name: name}) CREATE (c)-[:TAGGED]->(t))
RETURN c.id AS id
