// The live agent state entries among $keys ({agent_id, session_id, key} each; session_id '' = none).
UNWIND $keys AS k
MATCH (s:AgentState {agent_id: k.agent_id, session_id: k.session_id, key: k.key})
WHERE s.version > 0 AND coalesce(s.expires_at, $now + 1) > $now
RETURN s {.agent_id, .session_id, .key, .value, .version, .updated_at, .expires_at} AS state
