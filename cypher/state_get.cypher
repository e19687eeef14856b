MATCH (s:AgentState {agent_id: $agent_id, session_id: $session_id, key: $key})
WHERE s.version > 0 AND (s.expires_at IS NULL OR s.expires_at > $now)
RETURN s {.agent_id, .session_id, .key, .value, .version, .updated_at, .expires_at} AS state
