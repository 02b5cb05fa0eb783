-- The first schema. Times are UNIX seconds (REAL). Payloads are JSON (BLOB).

-- One row per workflow run. rid is the creation order: the FIFO key of every queue below.
CREATE TABLE runs (
    rid             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    workflow        TEXT NOT NULL,
    version         TEXT,
    shard           INTEGER NOT NULL,
    status          TEXT NOT NULL,          -- running | parked | succeeded | failed | cancelled
    args            BLOB NOT NULL,
    result          BLOB,
    error           BLOB,                   -- JSON {type, message, ...} when failed or parked
    idempotency_key TEXT UNIQUE,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    finished_at     REAL,
    last_seq        INTEGER NOT NULL DEFAULT 0  -- journal events recorded so far
);
CREATE INDEX runs_status ON runs (status, rid);

-- The journal: one row per step call (or durable sleep), by its position in the workflow.
CREATE TABLE steps (
    run_rid     INTEGER NOT NULL,
    pos         INTEGER NOT NULL,
    kind        TEXT NOT NULL,              -- step | sleep
    name        TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    args        BLOB,
    status      TEXT NOT NULL,              -- pending | succeeded | failed
    attempts    INTEGER NOT NULL DEFAULT 0, -- attempts started
    result      BLOB,
    error       BLOB,                       -- last error, JSON
    seq         INTEGER,                    -- delivery order of the result within the run
    created_at  REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (run_rid, pos)
) WITHOUT ROWID;

-- The task queue. A row lives from the step's scheduling until the transaction that records its
-- result. claim_token IS NULL means queued; otherwise it is in flight with that claim.
CREATE TABLE tasks (
    run_rid      INTEGER NOT NULL,
    pos          INTEGER NOT NULL,
    shard        INTEGER NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 1,
    not_before   REAL NOT NULL DEFAULT 0,
    claim_token  INTEGER,
    claim_engine INTEGER,
    claim_epoch  INTEGER,
    claimed_at   REAL,
    PRIMARY KEY (run_rid, pos)
) WITHOUT ROWID;
-- FIFO claim order: oldest workflow first, then step position.
CREATE INDEX tasks_queued ON tasks (shard, run_rid, pos) WHERE claim_token IS NULL;
CREATE INDEX tasks_claimed ON tasks (claim_engine) WHERE claim_token IS NOT NULL;

-- Durable replay queue: runs whose journal has events their workflow code has not yet seen.
-- seq is the run's last_seq when queued; a replay deletes the row only if it consumed that far.
CREATE TABLE replays (
    run_rid    INTEGER PRIMARY KEY,
    shard      INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX replays_shard ON replays (shard, run_rid);

-- Durable timers (ctx.sleep). Firing one records the sleep's journal entry.
CREATE TABLE timers (
    run_rid INTEGER NOT NULL,
    pos     INTEGER NOT NULL,
    shard   INTEGER NOT NULL,
    fire_at REAL NOT NULL,
    PRIMARY KEY (run_rid, pos)
) WITHOUT ROWID;
CREATE INDEX timers_due ON timers (fire_at);

-- Engines that have run on this file, with their epoch and heartbeat.
CREATE TABLE engines (
    id           INTEGER PRIMARY KEY,
    epoch        INTEGER NOT NULL,
    pid          INTEGER NOT NULL,
    host         TEXT NOT NULL,
    state        TEXT NOT NULL,             -- running | draining | stopped | dead
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);

-- Settings of the database itself. epoch: engines whose epoch is older stop claiming and drain.
-- shards: fixed when the file is created, since every run row carries its shard.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('epoch', 0);
