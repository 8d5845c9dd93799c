CREATE TABLE definitions (
    hash       TEXT PRIMARY KEY,
    workflow   TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    workflow        TEXT NOT NULL,
    definition_hash TEXT NOT NULL REFERENCES definitions(hash),
    status          TEXT NOT NULL,
    priority        TEXT NOT NULL,
    input           TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    output          TEXT,
    error           TEXT,
    idempotency_key TEXT UNIQUE,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT,
    deadline_at     BIGINT
);
CREATE INDEX runs_unfinished ON runs(status) WHERE status IN ('queued', 'running');
CREATE INDEX runs_workflow ON runs(workflow, id);

CREATE TABLE steps (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    output      TEXT,
    error       TEXT,
    started_at  BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (run_id, step_id)
);

CREATE TABLE events (
    run_id  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    step_id TEXT,
    data    TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
