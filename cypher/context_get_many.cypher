// The live contexts among $ids.
UNWIND $ids AS id
MATCH (c:Context {id: id})
WHERE NOT c.deleted
RETURN c {.id, .session_id, .agent_id, .type, .content, .tags, .metadata, .visibility, .created_at, .updated_at,
          .version, .expires_at, .content_hash} AS context
