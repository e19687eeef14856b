MATCH (k:ApiKey {key_id: $key_id})
WHERE NOT k.revoked
RETURN k {.key_id, .agent_id, .agent_type, .permissions, .sessions, .created_at, .revoked} AS key,
       k.secret_hash AS secret_hash
