// Agent states ordered by (agent_id, session_id, key) after the given triple (export).
MATCH (s:AgentState)
WHERE s.version > 0
  AND (s.agent_id > $agent_id
       OR (s.agent_id = $agent_id AND (s.session_id > $session_id
           OR (s.session_id = $session_id AND s.key > $key))))
RETURN s {.agent_id, .session_id, .key, .value, .version, .updated_at, .expires_at} AS state
ORDER BY s.agent_id, s.session_id, s.key
LIMIT $limit
