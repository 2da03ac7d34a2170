-- deploy-code state, schema version 1.
-- Applied inside one IMMEDIATE transaction; the tool sets `PRAGMA application_id`
-- and `PRAGMA user_version` in the same transaction.

-- Identity and settings: lineage, serial, secret_key (hex), created_at.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per deployed service. `spec` is the canonical JSON of the applied
-- spec; sensitive values appear only as keyed digests.
CREATE TABLE services (
    name       TEXT PRIMARY KEY NOT NULL,
    spec       TEXT NOT NULL,
    spec_hash  TEXT NOT NULL,
    backend    TEXT NOT NULL,
    handles    TEXT NOT NULL DEFAULT '[]',
    status     TEXT NOT NULL CHECK (status IN ('ready', 'tainted', 'pending')),
    gpus       TEXT NOT NULL DEFAULT '[]',
    revision   INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;

-- The deployment history: one row per apply, destroy or rollback.
CREATE TABLE deployments (
    revision        INTEGER PRIMARY KEY,
    started_at      TEXT NOT NULL,
    finished_at     TEXT,
    user            TEXT NOT NULL,
    host            TEXT NOT NULL,
    command         TEXT NOT NULL,
    config_snapshot TEXT NOT NULL,
    config_hash     TEXT NOT NULL,
    plan_summary    TEXT NOT NULL DEFAULT 'null',
    outcome         TEXT NOT NULL CHECK (outcome IN
        ('in_progress', 'succeeded', 'failed', 'rolled_back', 'rollback_failed')),
    evidence        TEXT NOT NULL DEFAULT 'null'
);

-- The audit log.
CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    revision INTEGER NOT NULL,
    at       TEXT NOT NULL,
    service  TEXT,
    kind     TEXT NOT NULL,
    outcome  TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX events_by_service ON events (service, id);

-- The intent journal: a row before every side effect, closed after it.
CREATE TABLE intents (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    revision   INTEGER NOT NULL,
    service    TEXT NOT NULL,
    action     TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT 'null',
    started_at TEXT NOT NULL,
    closed_at  TEXT,
    outcome    TEXT,
    result     TEXT
);
CREATE INDEX intents_open ON intents (closed_at) WHERE closed_at IS NULL;

-- The lock: at most one row.
CREATE TABLE lock (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    start_time  INTEGER,
    user        TEXT NOT NULL,
    command     TEXT NOT NULL,
    acquired_at TEXT NOT NULL
);
