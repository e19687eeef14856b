// The live contexts among $ids with their embeddings.
UNWIND $ids AS id
MATCH (c:Context {id: id})
WHERE NOT c.deleted
RETURN c {.id, .session_id, .agent_id, .type, .content, .tags, .metadata, .visibility, .created_at, .updated_at,
          .version, .expires_at, .content_hash} AS context, c.embedding AS embedding
