-- Idempotent submission and the result cache: the same tables and rules as SQLite's 0005.
CREATE TABLE idempotency_keys (
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint  TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('processing', 'done')),
    holder       TEXT NOT NULL,
    job_ids      TEXT,
    created_at   BIGINT NOT NULL,
    held_until   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (scope, key),
    CHECK ((state = 'done') = (job_ids IS NOT NULL))
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

ALTER TABLE jobs ADD COLUMN cached BIGINT NOT NULL DEFAULT 0 CHECK (cached IN (0, 1));
