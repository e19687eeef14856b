MATCH (s:AgentState {agent_id: $agent_id, session_id: $session_id, key: $key})
DETACH DELETE s
