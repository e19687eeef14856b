// Contexts matching a filter across sessions, newest first (ids are UUIDv7), after the context $after.
// Scope ($admin, $agent_id, $sessions) and expiry ($now) always apply. Metadata values are matched on the
// flattened `m.<key>` properties.
// The conditions on id and expiry are written so that the unique index on id serves the order and the walk
// stops after $limit rows (no OR the planner would split into a union, no sort).
MATCH (c:Context)
WHERE NOT c.deleted
  AND c.id < coalesce($after, "~")
  AND (size($types) = 0 OR c.type IN $types)
  AND (size($agent_ids) = 0 OR c.agent_id IN $agent_ids)
  AND (size($visibility) = 0 OR c.visibility IN $visibility)
  AND (size($tags_any) = 0 OR any(tag IN c.tags WHERE tag IN $tags_any))
  AND all(tag IN $tags_all WHERE tag IN c.tags)
  AND ($created_after IS NULL OR c.created_at >= $created_after)
  AND ($created_before IS NULL OR c.created_at < $created_before)
  AND all(key IN keys($metadata) WHERE c['m.' + key] = $metadata[key])
  AND ($admin OR c.visibility = 'public' OR (c.visibility = 'private' AND c.agent_id = $agent_id))
  AND ($sessions IS NULL OR c.session_id IN $sessions)
  AND coalesce(c.expires_at, $now + 1) > $now
RETURN c {.id, .session_id, .agent_id, .type, .content, .tags, .metadata, .visibility, .created_at, .updated_at,
          .version, .expires_at, .content_hash} AS context
ORDER BY c.id DESC
LIMIT $limit
