-- printd initial schema (PostgreSQL). Timestamps are epoch seconds, JSON is jsonb.

CREATE TABLE printers (
    company     text NOT NULL,
    printer_id  text NOT NULL,
    branch      text NOT NULL,
    agent_id    text NOT NULL,
    status      text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL,
    PRIMARY KEY (company, printer_id)
);
CREATE INDEX printers_company_branch_idx ON printers (company, branch, printer_id);

CREATE TABLE jobs (
    job_id           text PRIMARY KEY,
    seq              bigserial NOT NULL UNIQUE,  -- orders delivery
    correlation_id   text NOT NULL,
    company          text NOT NULL,
    branch           text NOT NULL,
    printer_id       text NOT NULL,
    agent_id         text NOT NULL,
    kind             text NOT NULL,
    payload          jsonb NOT NULL,
    state            text NOT NULL
        CHECK (state IN ('queued', 'dispatched', 'acked', 'printed', 'failed', 'expired')),
    attempts         integer NOT NULL DEFAULT 0,
    idempotency_key  text,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL,
    dispatched_at    double precision,
    acked_at         double precision,
    finished_at      double precision,
    result           jsonb,
    error            text
);
CREATE UNIQUE INDEX jobs_company_idempotency_key_idx
    ON jobs (company, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_agent_state_seq_idx ON jobs (agent_id, state, seq);
CREATE INDEX jobs_company_printer_created_idx ON jobs (company, printer_id, created_at);
CREATE INDEX jobs_company_seq_idx ON jobs (company, seq);
CREATE INDEX jobs_live_seq_idx ON jobs (seq) WHERE state IN ('queued', 'dispatched', 'acked');

CREATE TABLE job_events (
    seq     bigserial PRIMARY KEY,
    job_id  text NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    state   text NOT NULL,
    at      double precision NOT NULL,
    detail  text
);
CREATE INDEX job_events_job_seq_idx ON job_events (job_id, seq);
