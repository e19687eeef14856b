// Previous versions of a context, newest first: those below $before, at most $limit.
MATCH (:Context {id: $id})-[:SUPERSEDES]->(v:ContextVersion)
WHERE v.version < $before
RETURN v {.version, .type, .content, .tags, .metadata, .visibility, .updated_at} AS version
ORDER BY v.version DESC
LIMIT $limit
