// Writes a locked agent state node with the embedding of its value's text ($embedding null: none), links it
// to its agent and, when it has one that exists, its session, and releases the lock.
MATCH (s:AgentState {agent_id: $agent_id, session_id: $session_id, key: $key})
SET s.value = $value, s.version = $version, s.updated_at = $updated_at, s.expires_at = $expires_at,
    s.point_id = $point_id, s.embedding = $embedding
REMOVE s._lock
MERGE (a:Agent {id: $agent_id})
MERGE (a)-[:HAS_STATE]->(s)
WITH s
OPTIONAL MATCH (session:Session {id: $session_id})
FOREACH (found IN CASE WHEN session IS NULL THEN [] ELSE [session] END | MERGE (s)-[:IN_SESSION]->(found))
RETURN s.version AS version
