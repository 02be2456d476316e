-- The job engine (coordinator, executors, leader, watchers): lookups it makes often, and the
-- rule that a job is rerun at most once, so a lineage stays a line.

-- A job has at most one rerun; two concurrent RerunJobs of the same job cannot both win.
CREATE UNIQUE INDEX jobs_one_rerun_idx ON jobs (rerun_of) WHERE rerun_of IS NOT NULL;

-- Executors claim admitted jobs nobody runs yet, and heartbeat the ones they own.
CREATE INDEX jobs_running_owner_idx ON jobs (owner, started_at) WHERE status = 'RUNNING';

-- The queue, in admission order (first in, first out).
CREATE INDEX jobs_queue_idx ON jobs (queued_at, id) WHERE status = 'QUEUED';

-- ListJobs: newest first, paged by (created_at, id).
CREATE INDEX jobs_created_idx ON jobs (created_at DESC, id DESC);
