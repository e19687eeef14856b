// Writes previous versions of a context as they were exported (import); existing ones are replaced.
MATCH (c:Context {id: $id})
UNWIND $versions AS v
MERGE (n:ContextVersion {context_id: $id, version: v.version})
SET n.type = v.type, n.content = v.content, n.tags = v.tags, n.metadata = v.metadata,
    n.visibility = v.visibility, n.updated_at = v.updated_at, n.content_hash = v.content_hash
MERGE (c)-[:SUPERSEDES]->(n)
