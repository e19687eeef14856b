MATCH (j:IndexJournal)
RETURN j.seq AS seq, j.item_id AS item_id
ORDER BY j.seq
LIMIT $limit
