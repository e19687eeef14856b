// Takes the session's write lock for the rest of the transaction (serialises dedup + insert per session).
MATCH (s:Session {id: $id})
SET s._lock = true
RETURN s.id AS id
