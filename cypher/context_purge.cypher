// Removes a deleted context for good, with its versions, its recall statistics and every edge.
MATCH (c:Context {id: $id})
WHERE c.deleted
OPTIONAL MATCH (c)-[:SUPERSEDES]->(v:ContextVersion)
OPTIONAL MATCH (r:ContextRecall {context_id: $id})
DETACH DELETE v, c, r
