-- Restarts made by the monitors of processes and containers, imported from
-- their status files into `events` (kind `restart`) by the next apply,
-- status, state show or metrics: each once, keyed by the instance (its
-- handle's identity and its monitor's pid and start time) and the restart's
-- number (0 for an opened circuit).
CREATE TABLE restart_imports (
    instance TEXT NOT NULL,
    restart  INTEGER NOT NULL,
    event_id INTEGER NOT NULL,
    PRIMARY KEY (instance, restart)
);
