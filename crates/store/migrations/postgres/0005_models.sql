-- Each job names the model that classifies it (jobs from before models were named were all
-- for the built-in model). Workers claim only jobs of the models they hold.
ALTER TABLE jobs ADD COLUMN model TEXT NOT NULL DEFAULT 'efficientnet-lite0'
    CHECK (length(model) BETWEEN 1 AND 64);
CREATE INDEX jobs_ready_model ON jobs (model, priority DESC, run_at, seq) WHERE status = 'queued';

-- The models the nodes serve: one row per model name (as last announced), and which nodes
-- announced it when (a node that stopped announcing no longer serves it).
CREATE TABLE models (
    name        TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64),
    version     TEXT NOT NULL,
    -- The model's input and output as JSON (its model.toml, resolved).
    spec        TEXT NOT NULL,
    labels      BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE model_nodes (
    model    TEXT NOT NULL,
    node     TEXT NOT NULL,
    version  TEXT NOT NULL,
    seen_at  BIGINT NOT NULL,
    PRIMARY KEY (model, node)
);
