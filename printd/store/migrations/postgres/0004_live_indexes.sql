-- A full delivery pass (an agent connects) reads its unfinished jobs in seq order: without this
-- it walked the company's whole history from seq 0. (SQLite's 0004 also rebuilds
-- jobs_live_printer_idx; PostgreSQL already matched its IN list.)
CREATE INDEX jobs_live_agent_idx ON jobs (company, agent_id, seq) WHERE state IN ('acked', 'dispatched', 'queued');
