-- A job's webhook: the URL it calls and the events (comma-separated, of running, succeeded,
-- failed, canceled) it is called for. NULL: no webhook.
ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
ALTER TABLE jobs ADD COLUMN webhook_events TEXT;

-- The outbox: one row per webhook call to make (one event of one job), written in the same
-- transaction as the change it announces, and claimed under a lease by one node's deliverer at
-- a time. `id` is the `webhook-id` every attempt of this delivery carries. `payload` is the job
-- (stored form, JSON) right after the change. Times are unix milliseconds.
CREATE TABLE webhook_deliveries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    job_id          TEXT NOT NULL,
    event           TEXT NOT NULL CHECK (event IN ('running', 'succeeded', 'failed', 'canceled')),
    url             TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed', 'gone')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at INTEGER,
    lease_owner     TEXT,
    lease_until     INTEGER,
    attempt_log     TEXT NOT NULL DEFAULT '[]',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id, seq);
