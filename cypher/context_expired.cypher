// Live contexts whose expiry has passed (the expiry task deletes them through the service).
MATCH (c:Context)
WHERE c.expires_at <= $now AND NOT c.deleted
RETURN c.id AS id
LIMIT $limit
