// Previous versions of a context, newest first.
MATCH (:Context {id: $id})-[:SUPERSEDES]->(v:ContextVersion)
RETURN v {.version, .type, .content, .tags, .metadata, .visibility, .updated_at} AS version
ORDER BY v.version DESC
