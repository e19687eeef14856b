// Recalled contexts matching a filter (the conditions of context_list.cypher), most recalled or most recently
// recalled first ($by_count), ties by id, after skipping $offset.
MATCH (r:ContextRecall)
MATCH (c:Context {id: r.context_id})
WHERE NOT c.deleted
  AND ($session_id IS NULL OR c.session_id = $session_id)
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
          .version, .expires_at, .content_hash} AS context, r.count AS count, r.last_at AS last_at
ORDER BY CASE WHEN $by_count THEN r.count ELSE r.last_at END DESC, r.context_id DESC
SKIP $offset
LIMIT $limit
