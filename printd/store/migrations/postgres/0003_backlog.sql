-- A partial index of unfinished jobs per printer: the backlog cap counts them at every accept.
CREATE INDEX jobs_live_printer_idx ON jobs (company, printer_id) WHERE state IN ('queued', 'dispatched', 'acked');
