// Creates a session unless the id is taken (no row = taken).
OPTIONAL MATCH (existing:Session {id: $id})
WITH existing WHERE existing IS NULL
CREATE (s:Session {id: $id, purpose: $purpose, metadata: $metadata, created_by: $created_by, created_at: $created_at})
MERGE (a:Agent {id: $created_by})
RETURN s.id AS id
