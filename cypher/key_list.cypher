MATCH (k:ApiKey)
RETURN k {.key_id, .agent_id, .agent_type, .permissions, .sessions, .created_at, .revoked} AS key
ORDER BY k.created_at, k.key_id
