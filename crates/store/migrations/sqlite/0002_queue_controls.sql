-- How often a job's worker was lost while running it (BullMQ's stalled count).
ALTER TABLE jobs ADD COLUMN stalls INTEGER NOT NULL DEFAULT 0 CHECK (stalls >= 0);

-- Global rate limits shared by every worker: the start times (unix ms, JSON array) of the jobs
-- started within the current window.
CREATE TABLE rate_limits (
    name   TEXT PRIMARY KEY NOT NULL,
    starts TEXT NOT NULL DEFAULT '[]'
);

CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX events_at ON events (at);
