// Creates or replaces (from)-[:RELATES_TO {relation}]->(to) between live contexts (no row = an end is missing).
MATCH (a:Context {id: $from_id}) WHERE NOT a.deleted
MATCH (b:Context {id: $to_id}) WHERE NOT b.deleted
MERGE (a)-[r:RELATES_TO {relation: $relation}]->(b)
ON CREATE SET r.created_at = $created_at
SET r.metadata = $metadata, r.created_by = $created_by
RETURN count(r) AS linked
