UNWIND $seqs AS seq
MATCH (j:IndexJournal {seq: seq})
DELETE j
