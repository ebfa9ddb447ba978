-- printd initial schema (SQLite). Timestamps are epoch seconds (REAL), JSON is TEXT.

CREATE TABLE printers (
    company     TEXT NOT NULL,
    printer_id  TEXT NOT NULL,
    branch      TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    status      TEXT NOT NULL,
    details     TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (company, printer_id)
);
CREATE INDEX printers_company_branch_idx ON printers (company, branch, printer_id);

CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, orders delivery
    job_id           TEXT NOT NULL UNIQUE,
    correlation_id   TEXT NOT NULL,
    company          TEXT NOT NULL,
    branch           TEXT NOT NULL,
    printer_id       TEXT NOT NULL,
    agent_id         TEXT NOT NULL,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    state            TEXT NOT NULL
        CHECK (state IN ('queued', 'dispatched', 'acked', 'printed', 'failed', 'expired')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    dispatched_at    REAL,
    acked_at         REAL,
    finished_at      REAL,
    result           TEXT,
    error            TEXT
);
CREATE UNIQUE INDEX jobs_company_idempotency_key_idx
    ON jobs (company, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_agent_state_seq_idx ON jobs (agent_id, state, seq);
CREATE INDEX jobs_company_printer_created_idx ON jobs (company, printer_id, created_at);
CREATE INDEX jobs_company_seq_idx ON jobs (company, seq);
CREATE INDEX jobs_live_seq_idx ON jobs (seq) WHERE state IN ('queued', 'dispatched', 'acked');

CREATE TABLE job_events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    state   TEXT NOT NULL,
    at      REAL NOT NULL,
    detail  TEXT
);
CREATE INDEX job_events_job_seq_idx ON job_events (job_id, seq);
