// The recall statistics of those of $ids recalled at least once.
UNWIND $ids AS id
MATCH (r:ContextRecall {context_id: id})
RETURN r.context_id AS id, r.count AS count, r.last_at AS last_at
