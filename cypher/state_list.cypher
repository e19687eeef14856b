// An agent's live states (in one session, or '' for none) whose key starts with $prefix, after $after.
MATCH (s:AgentState {agent_id: $agent_id, session_id: $session_id})
WHERE s.key STARTS WITH $prefix AND s.key > $after AND s.version > 0
  AND (s.expires_at IS NULL OR s.expires_at > $now)
RETURN s {.agent_id, .session_id, .key, .value, .version, .updated_at, .expires_at} AS state
ORDER BY s.key
LIMIT $limit
