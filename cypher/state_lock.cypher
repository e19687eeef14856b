// Finds or creates an agent state node and takes its write lock; version 0 means new.
MERGE (s:AgentState {agent_id: $agent_id, session_id: $session_id, key: $key})
ON CREATE SET s.version = 0
SET s._lock = true
RETURN s.version AS version, s.expires_at AS expires_at
