// Takes the context's write lock for the rest of the transaction and returns its live state and embedding.
MATCH (c:Context {id: $id})
WHERE NOT c.deleted
SET c._lock = true
RETURN c {.id, .session_id, .agent_id, .type, .content, .tags, .metadata, .visibility, .created_at, .updated_at,
          .version, .expires_at, .content_hash} AS context, c.embedding AS embedding
