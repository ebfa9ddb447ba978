-- A full delivery pass (an agent connects) reads its unfinished jobs in seq order: without this
-- it walked the company's whole history from seq 0. (SQLite's 0004 also rebuilds
-- jobs_live_printer_idx; PostgreSQL already matched its IN list.)
CREATE INDEX jobs_live_agent_idx ON jobs (company, agent_id, seq) WHERE state IN ('acked', 'dispatched', 'queued');
-- A queued-only pass (a job was accepted for a connected agent) reads the agent's first 50
-- queued jobs in seq order: with seq in the index that is 50 index entries, not every queued job
-- of the agent fetched and sorted (SQLite's index carries the rowid, which is seq).
DROP INDEX jobs_queued_agent_idx;
CREATE INDEX jobs_queued_agent_idx ON jobs (company, agent_id, seq) WHERE state = 'queued';
-- Superseded by the two indexes above (every query names the company): one index fewer to
-- update on each of a job's three transitions.
DROP INDEX jobs_agent_state_seq_idx;
