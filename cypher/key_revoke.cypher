MATCH (k:ApiKey {key_id: $key_id})
SET k.revoked = true
RETURN k.key_id AS key_id
