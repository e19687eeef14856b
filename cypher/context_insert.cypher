// A new context node with its AUTHORED, IN_SESSION and TAGGED edges; releases the session lock.
MATCH (s:Session {id: $session_id})
CREATE (c:Context)
SET c = $props
MERGE (a:Agent {id: $agent_id})
CREATE (a)-[:AUTHORED]->(c), (c)-[:IN_SESSION]->(s)
FOREACH (name IN $tags | MERGE (t:Tag {name: name}) CREATE (c)-[:TAGGED]->(t))
REMOVE s._lock
RETURN c.id AS id
