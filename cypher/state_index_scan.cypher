// Agent state entries with embeddings in point id order after $after (full reindex).
MATCH (s:AgentState)
WHERE s.point_id > $after AND s.version > 0 AND s.embedding IS NOT NULL
RETURN s {.agent_id, .session_id, .key, .value, .version, .updated_at, .expires_at} AS state,
       s.point_id AS point_id, s.embedding AS embedding
ORDER BY s.point_id
LIMIT $limit
