-- ferry:no-transaction
-- Indexes for the queue and for listing jobs, built without blocking writers. This file runs
-- statement by statement under the migration lease; each index is dropped first so that a
-- run interrupted mid-build (which leaves an INVALID index behind) is repaired by the rerun.

DROP INDEX CONCURRENTLY IF EXISTS jobs_status_created_idx;
CREATE INDEX CONCURRENTLY jobs_status_created_idx ON jobs (status, created_at, id);

DROP INDEX CONCURRENTLY IF EXISTS jobs_root_attempt_idx;
CREATE INDEX CONCURRENTLY jobs_root_attempt_idx ON jobs (root_job_id, attempt);
