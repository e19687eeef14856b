// The agent state entries among $ids (point ids) that have an embedding.
UNWIND $ids AS id
MATCH (s:AgentState {point_id: id})
WHERE s.version > 0 AND s.embedding IS NOT NULL
RETURN s {.agent_id, .session_id, .key, .value, .version, .updated_at, .expires_at} AS state,
       s.point_id AS point_id, s.embedding AS embedding
