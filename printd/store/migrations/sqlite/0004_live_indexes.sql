-- SQLite uses a partial index only when the query's WHERE repeats the index's own terms, and an
-- IN list must list the states in the same order: the queries write LIVE_SQL (sorted), which
-- 0003's index did not match, so the backlog count walked every job the printer ever had.
DROP INDEX jobs_live_printer_idx;
CREATE INDEX jobs_live_printer_idx ON jobs (company, printer_id) WHERE state IN ('acked', 'dispatched', 'queued');
-- A full delivery pass (an agent connects) reads its unfinished jobs in seq order: without this
-- it walked the company's whole history from seq 0.
CREATE INDEX jobs_live_agent_idx ON jobs (company, agent_id, seq) WHERE state IN ('acked', 'dispatched', 'queued');
-- Superseded by the two indexes above (every query names the company): one index fewer to
-- update on each of a job's three transitions.
DROP INDEX jobs_agent_state_seq_idx;
