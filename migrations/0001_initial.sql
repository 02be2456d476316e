-- Ferry control database, initial schema.
-- Statuses, kinds and roles are text with CHECK constraints rather than enum types, so a
-- later migration can extend them inside a transaction.

-- Registered PostgreSQL instances. The DSN holds a password: never returned or logged.
CREATE TABLE instances (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    dsn         text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per job attempt. A rerun is a new row with attempt + 1, rerun_of and the same
-- root_job_id. The resume state of a lineage lives here and in the tables below: never in
-- events or artifacts, and no retention sweep deletes it.
CREATE TABLE jobs (
    id                 uuid PRIMARY KEY,
    kind               text NOT NULL CHECK (kind IN ('clone', 'export', 'import', 'instance_replace')),
    status             text NOT NULL CHECK (status IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED')),
    params             jsonb NOT NULL,
    -- Idempotency key of StartJob/RerunJob: a repeat returns the job the first call made.
    request_id         text UNIQUE,
    attempt            integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    rerun_of           uuid REFERENCES jobs (id),
    root_job_id        uuid NOT NULL REFERENCES jobs (id),
    progress           jsonb NOT NULL DEFAULT '{}',
    -- Kind-specific resume state handed to the next attempt of the lineage.
    resume_state       jsonb NOT NULL DEFAULT '{}',
    error_code         text,
    error_message      text,
    error_retryable    boolean,
    -- The principal that asked for the job.
    created_by         text,
    -- The replica whose executor runs the job, and its liveness.
    owner              text,
    heartbeat_at       timestamptz,
    cancel_requested_at timestamptz,
    -- Last event sequence number handed out for this job (events are numbered per job).
    last_seq           bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    queued_at          timestamptz,
    started_at         timestamptz,
    finished_at        timestamptz,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((status IN ('SUCCEEDED', 'FAILED', 'CANCELLED')) = (finished_at IS NOT NULL)),
    CHECK (rerun_of IS NULL OR attempt > 1)
);

-- The instances (and tenants) a job touches; admission counts RUNNING jobs per instance and
-- refuses two RUNNING jobs writing the same (instance, tenant) from these rows. An empty
-- tenant stands for the whole instance (instance_replace).
CREATE TABLE job_instances (
    job_id       uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    instance_id  text NOT NULL REFERENCES instances (id),
    tenant       text NOT NULL DEFAULT '',
    writes       boolean NOT NULL,
    PRIMARY KEY (job_id, instance_id, tenant)
);
CREATE INDEX job_instances_instance_idx ON job_instances (instance_id, tenant);

-- Progress and status changes of a job, numbered by seq per job (WatchJob's afterSeq).
CREATE TABLE job_events (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq         bigint NOT NULL CHECK (seq >= 1),
    type        text NOT NULL CHECK (type IN ('PROGRESS', 'STATUS')),
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

-- Per-table resume state of clone/import lineages: a table copied and verified by any
-- attempt is skipped by later ones.
CREATE TABLE job_tables (
    root_job_id   uuid NOT NULL REFERENCES jobs (id),
    tenant        text NOT NULL,
    table_name    text NOT NULL,
    status        text NOT NULL CHECK (status IN ('COPYING', 'COPIED', 'VERIFIED')),
    row_count     bigint,
    checksum      text,
    job_id        uuid NOT NULL REFERENCES jobs (id),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (root_job_id, tenant, table_name)
);

-- Per-tenant outcome of instance_replace lineages: tenants that succeeded are skipped by reruns.
CREATE TABLE instance_replace_results (
    root_job_id   uuid NOT NULL REFERENCES jobs (id),
    tenant        text NOT NULL,
    status        text NOT NULL CHECK (status IN ('RUNNING', 'SUCCEEDED', 'FAILED')),
    job_id        uuid NOT NULL REFERENCES jobs (id),
    error_message text,
    started_at    timestamptz,
    finished_at   timestamptz,
    PRIMARY KEY (root_job_id, tenant)
);

-- Which lineage created a target tenant, so Ferry never overwrites a tenant it did not create
-- and a rerun may resume into the partial result of its own lineage.
CREATE TABLE tenant_claims (
    instance_id  text NOT NULL REFERENCES instances (id),
    tenant       text NOT NULL,
    root_job_id  uuid NOT NULL REFERENCES jobs (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, tenant)
);

-- Archives written by export jobs. The cleanup worker deletes the file first, then the row.
CREATE TABLE job_artifacts (
    id          uuid PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES jobs (id),
    path        text NOT NULL,
    size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
    sha256      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX job_artifacts_expires_idx ON job_artifacts (expires_at);

-- Named leases (leader, cleanup worker): a row lock with an owner and an expiry taken from
-- the database clock. Unlike session advisory locks, they survive transaction pooling.
CREATE TABLE leases (
    name         text PRIMARY KEY,
    owner        text NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    renewed_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

COMMENT ON TABLE jobs IS 'Ferry jobs; resume state is first-class and never swept by retention.';
