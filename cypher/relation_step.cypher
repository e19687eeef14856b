// One breadth-first level: the edges leaving $ids (both directions when $both), optionally of one relation,
// one per node reached, the first $limit in the order they are reached.
UNWIND $ids AS id
MATCH (a:Context {id: id})-[r:RELATES_TO]-(b:Context)
WHERE ($both OR startNode(r) = a) AND ($relation IS NULL OR r.relation = $relation)
WITH b.id AS to_id, head(collect([a.id, r.relation])) AS edge
RETURN edge[0] AS from_id, to_id, edge[1] AS relation
ORDER BY to_id
LIMIT $limit
