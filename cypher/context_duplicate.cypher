// A live context of the session with this content hash that the scope may see.
MATCH (c:Context {session_id: $session_id, content_hash: $content_hash})
WHERE NOT c.deleted
  AND ($admin OR c.visibility = 'public' OR (c.visibility = 'private' AND c.agent_id = $agent_id))
  AND ($sessions IS NULL OR c.session_id IN $sessions)
  AND (c.expires_at IS NULL OR c.expires_at > $now)
RETURN c {.id, .session_id, .agent_id, .type, .content, .tags, .metadata, .visibility, .created_at, .updated_at,
          .version, .expires_at, .content_hash} AS context
ORDER BY c.id
LIMIT 1
