-- API tokens, job owners and quota windows: the same tables and rules as SQLite's 0004.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    secret_sha256 TEXT NOT NULL CHECK (length(secret_sha256) = 64),
    scopes        TEXT NOT NULL CHECK (length(scopes) > 0),
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT
);

ALTER TABLE jobs ADD COLUMN owner TEXT;
CREATE INDEX jobs_owner ON jobs (owner, seq);
CREATE INDEX jobs_owner_status ON jobs (owner, status);

ALTER TABLE events ADD COLUMN owner TEXT;

CREATE TABLE quota_windows (
    key          TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    count        BIGINT NOT NULL CHECK (count >= 0),
    PRIMARY KEY (key, window_start)
);
