CALL { MATCH (s:Session) RETURN count(s) AS sessions }
CALL { MATCH (c:Context) WHERE NOT c.deleted RETURN count(c) AS contexts }
CALL { MATCH (s:AgentState) WHERE s.version > 0 RETURN count(s) AS agent_states }
CALL { MATCH (j:IndexJournal) RETURN count(j) AS pending_index }
RETURN sessions, contexts, agent_states, pending_index
