// Marks a context deleted (or live again, when a delete is undone) and releases its lock.
MATCH (c:Context {id: $id})
SET c.deleted = $deleted
REMOVE c._lock
RETURN c.id AS id
