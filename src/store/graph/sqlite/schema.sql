-- Schema of the embedded graph store. Applied idempotently at start-up.
-- Times are milliseconds since the Unix epoch. JSON columns hold JSON text.
CREATE TABLE IF NOT EXISTS sessions (
    id          TEXT PRIMARY KEY,
    purpose     TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Context nodes. (Agent)-[:AUTHORED] is agent_id, -[:IN_SESSION] is session_id.
CREATE TABLE IF NOT EXISTS contexts (
    id            TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL REFERENCES sessions(id),
    agent_id      TEXT NOT NULL,
    type          TEXT NOT NULL,
    content       TEXT NOT NULL,
    tags          TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    visibility    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    version       INTEGER NOT NULL,
    expires_at    INTEGER,
    content_hash  TEXT NOT NULL,
    embedding     BLOB NOT NULL,
    deleted       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS contexts_by_session ON contexts(session_id, id);
CREATE INDEX IF NOT EXISTS contexts_by_hash ON contexts(session_id, content_hash);
CREATE INDEX IF NOT EXISTS contexts_by_agent ON contexts(agent_id, id);
CREATE INDEX IF NOT EXISTS contexts_by_expiry ON contexts(expires_at) WHERE expires_at IS NOT NULL;

-- (Context)-[:TAGGED]->(Tag)
CREATE TABLE IF NOT EXISTS context_tags (
    context_id  TEXT NOT NULL,
    tag         TEXT NOT NULL,
    PRIMARY KEY (context_id, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS context_tags_by_tag ON context_tags(tag, context_id);

-- (Context)-[:SUPERSEDES]->(older version)
CREATE TABLE IF NOT EXISTS context_versions (
    context_id    TEXT NOT NULL,
    version       INTEGER NOT NULL,
    type          TEXT NOT NULL,
    content       TEXT NOT NULL,
    tags          TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    visibility    TEXT NOT NULL,
    updated_at    INTEGER NOT NULL,
    content_hash  TEXT NOT NULL,
    PRIMARY KEY (context_id, version)
);

-- (Context)-[:RELATES_TO {relation}]->(Context)
CREATE TABLE IF NOT EXISTS relations (
    from_id     TEXT NOT NULL,
    to_id       TEXT NOT NULL,
    relation    TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (from_id, relation, to_id)
);
CREATE INDEX IF NOT EXISTS relations_by_target ON relations(to_id);

-- Agent state nodes: (Agent)-[:HAS_STATE] is agent_id, -[:IN_SESSION] is session_id ('' means "no
-- session"). point_id names the entry's vector point (StateKey::point_id); embedding is that of the text
-- the value carries, NULL when it carries none (and in rows written before state was embedded).
CREATE TABLE IF NOT EXISTS agent_state (
    agent_id    TEXT NOT NULL,
    session_id  TEXT NOT NULL DEFAULT '',
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    point_id    TEXT,
    embedding   BLOB,
    PRIMARY KEY (agent_id, session_id, key)
);
CREATE INDEX IF NOT EXISTS agent_state_by_expiry ON agent_state(expires_at) WHERE expires_at IS NOT NULL;

-- How often, and when last, a context was returned by a search or a read (rows of recalled contexts only).
CREATE TABLE IF NOT EXISTS context_recalls (
    context_id        TEXT PRIMARY KEY,
    recall_count      INTEGER NOT NULL,
    last_recalled_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS context_recalls_by_count ON context_recalls(recall_count, context_id);
CREATE INDEX IF NOT EXISTS context_recalls_by_time ON context_recalls(last_recalled_at, context_id);

-- Live row counts kept by triggers (see `count_live_contexts`): 'contexts' counts rows with deleted = 0.
CREATE TABLE IF NOT EXISTS live_counts (
    name  TEXT PRIMARY KEY,
    n     INTEGER NOT NULL
) WITHOUT ROWID;

-- Vector-side changes not yet known durable; replayed at start-up.
CREATE TABLE IF NOT EXISTS index_journal (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id     TEXT NOT NULL,
    op          TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
