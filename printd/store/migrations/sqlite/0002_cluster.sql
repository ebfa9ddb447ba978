-- The cluster's fencing lives where the data lives (docs/architecture.md, "Fencing").
-- With SQLite printd runs alone; the same tables keep a second instance from starting on the
-- same file and give agent sessions the same fencing as on PostgreSQL.

CREATE TABLE instances (
    instance_id   TEXT PRIMARY KEY,
    incarnation   TEXT NOT NULL,
    clustered     INTEGER NOT NULL,
    url           TEXT NOT NULL,
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL
);

CREATE TABLE agent_sessions (
    company       TEXT NOT NULL,
    agent_id      TEXT NOT NULL,
    session       INTEGER NOT NULL,
    instance_id   TEXT,
    incarnation   TEXT,
    connected_at  REAL,
    released_at   REAL,
    PRIMARY KEY (company, agent_id)
);
CREATE INDEX agent_sessions_instance_idx ON agent_sessions (instance_id);

CREATE TABLE cluster_leader (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    token        INTEGER NOT NULL,
    instance_id  TEXT,
    since        REAL
);
INSERT INTO cluster_leader (id, token) VALUES (1, 0);

ALTER TABLE jobs ADD COLUMN origin TEXT;
CREATE INDEX jobs_queued_agent_idx ON jobs (company, agent_id) WHERE state = 'queued';
