// Writes a locked agent state node and releases the lock.
MATCH (s:AgentState {agent_id: $agent_id, session_id: $session_id, key: $key})
SET s.value = $value, s.version = $version, s.updated_at = $updated_at, s.expires_at = $expires_at
REMOVE s._lock
RETURN s.version AS version
