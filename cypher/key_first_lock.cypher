// Serialises first-key creation: the SET write-locks the one KeyStoreLock node (unique by name) until commit,
// so of transactions racing for the first key, each sees the keys the earlier ones created.
MERGE (l:KeyStoreLock {name: $name})
SET l.claimed_at = $now
WITH l
OPTIONAL MATCH (k:ApiKey) WHERE NOT k.revoked
RETURN count(k) AS active
