// Undo of an insert whose vector write failed: the node and its edges go.
MATCH (c:Context {id: $id})
DETACH DELETE c
