// Adds recall tallies ($tallies: {id, count, at}) to the statistics of live contexts.
UNWIND $tallies AS tally
MATCH (c:Context {id: tally.id})
WHERE NOT c.deleted
MERGE (r:ContextRecall {context_id: tally.id})
ON CREATE SET r.count = 0, r.last_at = tally.at
SET r.count = r.count + tally.count,
    r.last_at = CASE WHEN r.last_at < tally.at THEN tally.at ELSE r.last_at END
