// Removes agent state entries whose expiry has passed, at most $limit per call.
MATCH (s:AgentState)
WHERE s.expires_at <= $now
WITH s LIMIT $limit
DELETE s
RETURN count(*) AS purged
