// A new API key (the secret only as its sha256, hex).
CREATE (:ApiKey {key_id: $key_id, secret_hash: $secret_hash, agent_id: $agent_id, agent_type: $agent_type,
                 permissions: $permissions, sessions: $sessions, created_at: $created_at, revoked: false})
