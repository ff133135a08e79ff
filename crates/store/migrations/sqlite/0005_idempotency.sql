-- Idempotent submission: the keys clients send with `POST /api/jobs` (`Idempotency-Key`),
-- per caller, with what the first request was and the jobs it created.
CREATE TABLE idempotency_keys (
    -- The API token's id, or '' when the API is open.
    scope        TEXT NOT NULL,
    key          TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- A digest of the first request's files and fields.
    fingerprint  TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('processing', 'done')),
    -- Which request holds a key that is processing (so a request whose hold lapsed cannot
    -- complete it after another took over).
    holder       TEXT NOT NULL,
    -- The jobs created, as a JSON array of ids, once done.
    job_ids      TEXT,
    created_at   INTEGER NOT NULL,
    -- A processing key whose request died is free again after this.
    held_until   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (scope, key),
    CHECK ((state = 'done') = (job_ids IS NOT NULL))
) WITHOUT ROWID;

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Jobs answered from the result cache (an earlier job's result for the same image and model).
ALTER TABLE jobs ADD COLUMN cached INTEGER NOT NULL DEFAULT 0 CHECK (cached IN (0, 1));
