// Constraints and indexes of the Neo4j graph store, applied idempotently at start-up (one statement per ';').
CREATE CONSTRAINT session_id IF NOT EXISTS FOR (s:Session) REQUIRE s.id IS UNIQUE;
CREATE CONSTRAINT context_id IF NOT EXISTS FOR (c:Context) REQUIRE c.id IS UNIQUE;
CREATE CONSTRAINT agent_id IF NOT EXISTS FOR (a:Agent) REQUIRE a.id IS UNIQUE;
CREATE CONSTRAINT tag_name IF NOT EXISTS FOR (t:Tag) REQUIRE t.name IS UNIQUE;
CREATE CONSTRAINT agent_state_key IF NOT EXISTS FOR (s:AgentState) REQUIRE (s.agent_id, s.session_id, s.key) IS UNIQUE;
CREATE CONSTRAINT journal_seq IF NOT EXISTS FOR (j:IndexJournal) REQUIRE j.seq IS UNIQUE;
CREATE INDEX context_session_hash IF NOT EXISTS FOR (c:Context) ON (c.session_id, c.content_hash);
CREATE INDEX context_session IF NOT EXISTS FOR (c:Context) ON (c.session_id);
CREATE INDEX context_expiry IF NOT EXISTS FOR (c:Context) ON (c.expires_at);
CREATE INDEX agent_state_expiry IF NOT EXISTS FOR (s:AgentState) ON (s.expires_at);
CREATE INDEX context_version IF NOT EXISTS FOR (v:ContextVersion) ON (v.context_id, v.version);
CREATE CONSTRAINT api_key_id IF NOT EXISTS FOR (k:ApiKey) REQUIRE k.key_id IS UNIQUE;
CREATE CONSTRAINT key_store_lock IF NOT EXISTS FOR (l:KeyStoreLock) REQUIRE l.name IS UNIQUE;
CREATE INDEX context_session_id IF NOT EXISTS FOR (c:Context) ON (c.session_id, c.id);
CREATE INDEX agent_state_point IF NOT EXISTS FOR (s:AgentState) ON (s.point_id);
CREATE CONSTRAINT context_recall_id IF NOT EXISTS FOR (r:ContextRecall) REQUIRE r.context_id IS UNIQUE;
CREATE INDEX context_deleted IF NOT EXISTS FOR (c:Context) ON (c.deleted);
