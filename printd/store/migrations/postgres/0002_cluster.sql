-- The cluster's fencing lives where the data lives (docs/architecture.md, "Fencing").

-- One row per printd instance using this database: unique ids, and who is alive (heartbeat).
CREATE TABLE instances (
    instance_id   text PRIMARY KEY,
    incarnation   text NOT NULL,
    clustered     boolean NOT NULL,
    url           text NOT NULL,
    started_at    double precision NOT NULL,
    heartbeat_at  double precision NOT NULL
);

-- The current connection of each agent. `session` only grows: every transition made for an
-- agent carries the session it was made under, and a stale one is refused.
CREATE TABLE agent_sessions (
    company       text NOT NULL,
    agent_id      text NOT NULL,
    session       bigint NOT NULL,
    instance_id   text,            -- NULL once released (the agent is offline)
    incarnation   text,
    connected_at  double precision,
    released_at   double precision,
    PRIMARY KEY (company, agent_id)
);
CREATE INDEX agent_sessions_instance_idx ON agent_sessions (instance_id);

-- The leader's fencing token: it only grows; leader chores carry it.
CREATE TABLE cluster_leader (
    id           integer PRIMARY KEY CHECK (id = 1),
    token        bigint NOT NULL,
    instance_id  text,
    since        double precision
);
INSERT INTO cluster_leader (id, token) VALUES (1, 0);

-- Where the job was accepted: the instance whose caller waits for a printer test's result.
ALTER TABLE jobs ADD COLUMN origin text;
CREATE INDEX jobs_queued_agent_idx ON jobs (company, agent_id) WHERE state = 'queued';
