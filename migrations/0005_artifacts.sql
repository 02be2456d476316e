-- ferry:no-transaction
-- The artifact store (docs/artifacts.md): what an artifact row needs beyond 0001's columns,
-- and the indexes of ListArtifacts and of the retention worker. Non-transactional, so the
-- index on jobs (which may be large) builds without blocking writers; every statement is
-- safe to run again (a run interrupted midway is repaired by the rerun).
--
-- No job kind wrote job_artifacts before this migration, so the table is empty in practice.
-- The defaults below only let the NOT NULL columns be added to a table that has rows anyway;
-- they are dropped at once, so every row written from now on states each value. A row that
-- predates this migration has store_id '' (no store): the retention worker keeps it and says
-- so, and DeleteArtifact refuses it, rather than guess where its files are.
ALTER TABLE job_artifacts
    -- The id in the store's `.ferry-store-id`: which directory holds the artifact's folder.
    ADD COLUMN IF NOT EXISTS store_id        text    NOT NULL DEFAULT '',
    -- The instance and tenant it was exported from.
    ADD COLUMN IF NOT EXISTS source_instance text    NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS source_tenant   text    NOT NULL DEFAULT '',
    -- Tables and rows it holds, and the archive format's version.
    ADD COLUMN IF NOT EXISTS tables          bigint  NOT NULL DEFAULT 0 CHECK (tables >= 0),
    ADD COLUMN IF NOT EXISTS rows            bigint  NOT NULL DEFAULT 0 CHECK (rows >= 0),
    ADD COLUMN IF NOT EXISTS format_version  integer NOT NULL DEFAULT 0;

ALTER TABLE job_artifacts
    ALTER COLUMN store_id DROP DEFAULT,
    ALTER COLUMN source_instance DROP DEFAULT,
    ALTER COLUMN source_tenant DROP DEFAULT,
    ALTER COLUMN tables DROP DEFAULT,
    ALTER COLUMN rows DROP DEFAULT,
    ALTER COLUMN format_version DROP DEFAULT;

-- A row names its folder by one path component of the store, never a path that leads out of
-- it (the code refuses such a row too). NOT VALID: checked for every row written from now on,
-- without failing this migration on an old row.
ALTER TABLE job_artifacts DROP CONSTRAINT IF EXISTS job_artifacts_path_in_store;
ALTER TABLE job_artifacts ADD CONSTRAINT job_artifacts_path_in_store
    CHECK (path <> '' AND path <> '.' AND path <> '..' AND strpos(path, '/') = 0) NOT VALID;

-- ListArtifacts: newest first, paged by (created_at, id), optionally for one source.
DROP INDEX CONCURRENTLY IF EXISTS job_artifacts_created_idx;
CREATE INDEX CONCURRENTLY job_artifacts_created_idx ON job_artifacts (created_at DESC, id DESC);
DROP INDEX CONCURRENTLY IF EXISTS job_artifacts_source_idx;
CREATE INDEX CONCURRENTLY job_artifacts_source_idx ON job_artifacts (source_instance, source_tenant, created_at DESC, id DESC);

-- The retention worker deletes the events of jobs that finished longer ago than the event
-- retention: finished jobs by finish time.
DROP INDEX CONCURRENTLY IF EXISTS jobs_finished_idx;
CREATE INDEX CONCURRENTLY jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;
