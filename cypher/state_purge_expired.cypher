// Removes agent state entries whose expiry has passed, at most $limit per call; returns their keys so their
// vector points can be journaled in the same transaction.
MATCH (s:AgentState)
WHERE s.expires_at <= $now
WITH s LIMIT $limit
WITH s, s.agent_id AS agent_id, s.session_id AS session_id, s.key AS key
DETACH DELETE s
RETURN agent_id, session_id, key
