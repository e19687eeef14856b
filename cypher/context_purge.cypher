// Removes a deleted context for good, with its versions and every edge.
MATCH (c:Context {id: $id})
WHERE c.deleted
OPTIONAL MATCH (c)-[:SUPERSEDES]->(v:ContextVersion)
DETACH DELETE v, c
