-- The PostgreSQL schema: the same tables and rules as the SQLite one (migrations 0001 and 0002
-- there). Times are unix milliseconds, as on SQLite.

CREATE TABLE blobs (
    sha256       TEXT PRIMARY KEY CHECK (length(sha256) = 64),
    size         BIGINT NOT NULL CHECK (size > 0),
    content_type TEXT NOT NULL,
    width        BIGINT NOT NULL,
    height       BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE TABLE blob_chunks (
    sha256 TEXT NOT NULL REFERENCES blobs (sha256) ON DELETE CASCADE,
    idx    BIGINT NOT NULL CHECK (idx >= 0),
    data   BYTEA NOT NULL CHECK (length(data) <= 1048576),
    PRIMARY KEY (sha256, idx)
);

CREATE TABLE jobs (
    seq            BIGSERIAL PRIMARY KEY,
    id             TEXT NOT NULL UNIQUE,
    status         TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    image_sha256   TEXT NOT NULL REFERENCES blobs (sha256),
    file_name      TEXT,
    attempts       BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    stalls         BIGINT NOT NULL DEFAULT 0 CHECK (stalls >= 0),
    run_attempts   BIGINT NOT NULL DEFAULT 0 CHECK (run_attempts >= 0),
    max_attempts   BIGINT NOT NULL CHECK (max_attempts >= 1),
    priority       BIGINT NOT NULL DEFAULT 0,
    run_at         BIGINT NOT NULL,
    lease_owner    TEXT,
    lease_until    BIGINT,
    error_code     TEXT,
    error_message  TEXT,
    attempt_errors TEXT NOT NULL DEFAULT '[]',
    result         TEXT,
    created_at     BIGINT NOT NULL,
    started_at     BIGINT,
    finished_at    BIGINT,
    updated_at     BIGINT NOT NULL,
    CHECK ((status = 'running') = (lease_owner IS NOT NULL AND lease_until IS NOT NULL))
);

CREATE INDEX jobs_ready ON jobs (priority DESC, run_at, seq) WHERE status = 'queued';
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_image ON jobs (image_sha256);
CREATE INDEX jobs_status ON jobs (status, seq);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE events (
    seq    BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN ('created', 'running', 'succeeded', 'failed', 'canceled', 'retried', 'requeued', 'deleted')),
    status TEXT CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    at     BIGINT NOT NULL
);
CREATE INDEX events_at ON events (at);

CREATE TABLE rate_limits (
    name   TEXT PRIMARY KEY,
    starts TEXT NOT NULL DEFAULT '[]'
);
INSERT INTO rate_limits (name) VALUES ('global');
