// Live contexts are every Context node (the count store answers that without a scan) less the deleted ones
// (kept only until the journal purges them, and found through the context_deleted index).
CALL { MATCH (s:Session) RETURN count(s) AS sessions }
CALL { MATCH (c:Context) RETURN count(c) AS all_contexts }
CALL { MATCH (c:Context) WHERE c.deleted = true RETURN count(c) AS deleted }
CALL { MATCH (s:AgentState) WHERE s.version > 0 RETURN count(s) AS agent_states }
CALL { MATCH (j:IndexJournal) RETURN count(j) AS pending_index }
RETURN sessions, all_contexts - deleted AS contexts, agent_states, pending_index
