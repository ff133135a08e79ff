-- API tokens: only the SHA-256 of each token's secret is kept. Scopes are a comma-separated
-- list of submit, read, manage, admin (checked when read). Times are unix milliseconds.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    secret_sha256 TEXT NOT NULL CHECK (length(secret_sha256) = 64),
    scopes        TEXT NOT NULL CHECK (length(scopes) > 0),
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER,
    revoked_at    INTEGER
);

-- The token that created a job (NULL: created while the API was open, or by an older version).
ALTER TABLE jobs ADD COLUMN owner TEXT;
CREATE INDEX jobs_owner ON jobs (owner, seq);
CREATE INDEX jobs_owner_status ON jobs (owner, status);

-- The job's owner on each event, so that a replayed `deleted` event still knows whose it was.
ALTER TABLE events ADD COLUMN owner TEXT;

-- Request and submission quotas: one counter per key (a token or a client address, and what is
-- counted) per fixed window.
CREATE TABLE quota_windows (
    key          TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    count        INTEGER NOT NULL CHECK (count >= 0),
    PRIMARY KEY (key, window_start)
) WITHOUT ROWID;
