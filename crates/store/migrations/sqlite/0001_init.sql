-- Images, stored once per distinct content (SHA-256), in chunks of at most 1 MiB.
CREATE TABLE blobs (
    sha256       TEXT PRIMARY KEY NOT NULL CHECK (length(sha256) = 64),
    size         INTEGER NOT NULL CHECK (size > 0),
    content_type TEXT NOT NULL,
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE TABLE blob_chunks (
    sha256 TEXT NOT NULL REFERENCES blobs (sha256) ON DELETE CASCADE,
    idx    INTEGER NOT NULL CHECK (idx >= 0),
    data   BLOB NOT NULL CHECK (length(data) <= 1048576),
    PRIMARY KEY (sha256, idx)
) WITHOUT ROWID;

-- The jobs table is the queue.
CREATE TABLE jobs (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    status         TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    image_sha256   TEXT NOT NULL REFERENCES blobs (sha256),
    file_name      TEXT,
    -- attempts: every attempt ever made; run_attempts: those since the job was last queued by a
    -- person (created or manually retried), which max_attempts bounds.
    attempts       INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    run_attempts   INTEGER NOT NULL DEFAULT 0 CHECK (run_attempts >= 0),
    max_attempts   INTEGER NOT NULL CHECK (max_attempts >= 1),
    priority       INTEGER NOT NULL DEFAULT 0,
    run_at         INTEGER NOT NULL,
    lease_owner    TEXT,
    lease_until    INTEGER,
    error_code     TEXT,
    error_message  TEXT,
    attempt_errors TEXT NOT NULL DEFAULT '[]',
    result         TEXT,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER,
    updated_at     INTEGER NOT NULL,
    CHECK ((status = 'running') = (lease_owner IS NOT NULL AND lease_until IS NOT NULL))
);

CREATE INDEX jobs_ready ON jobs (status, priority DESC, run_at, seq);
CREATE INDEX jobs_lease ON jobs (status, lease_until);
CREATE INDEX jobs_image ON jobs (image_sha256);

-- Every change of a job, in order; server-sent events are replayed from here.
CREATE TABLE events (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN ('created', 'running', 'succeeded', 'failed', 'canceled', 'retried', 'requeued', 'deleted')),
    status TEXT CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    at     INTEGER NOT NULL
);
