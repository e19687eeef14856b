// Records a vector-side change that is not yet known durable.
CREATE (j:IndexJournal {seq: $seq, item_id: $item_id, op: $op, created_at: $created_at})
