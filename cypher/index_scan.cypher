// Live contexts with embeddings in id order after $after: the input of a full reindex.
MATCH (c:Context)
WHERE c.id > $after AND NOT c.deleted
RETURN c {.id, .session_id, .agent_id, .type, .content, .tags, .metadata, .visibility, .created_at, .updated_at,
          .version, .expires_at, .content_hash} AS context, c.embedding AS embedding
ORDER BY c.id
LIMIT $limit
