// Sessions ordered by id after $after; only those in $only unless it is null.
MATCH (s:Session)
WHERE s.id > $after AND ($only IS NULL OR s.id IN $only)
RETURN s {.id, .purpose, .metadata, .created_by, .created_at} AS session
ORDER BY s.id
LIMIT $limit
