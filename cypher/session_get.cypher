MATCH (s:Session {id: $id})
RETURN s {.id, .purpose, .metadata, .created_by, .created_at} AS session
