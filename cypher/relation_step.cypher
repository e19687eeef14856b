// One breadth-first level: the edges leaving $ids (both directions when $both), optionally of one relation,
// the first $limit in the order they are reached.
UNWIND $ids AS id
MATCH (a:Context {id: id})-[r:RELATES_TO]-(b:Context)
WHERE ($both OR startNode(r) = a) AND ($relation IS NULL OR r.relation = $relation)
RETURN a.id AS from_id, b.id AS to_id, r.relation AS relation
ORDER BY b.id
LIMIT $limit
