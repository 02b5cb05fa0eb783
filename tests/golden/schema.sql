-- PRAGMA user_version = 11

-- index mailbox_dedup
CREATE UNIQUE INDEX mailbox_dedup ON mailbox (run_rid, dedup_key) WHERE dedup_key IS NOT NULL;

-- index mailbox_unread
CREATE INDEX mailbox_unread ON mailbox (run_rid, topic, id) WHERE consumed_pos IS NULL;

-- index payloads_unreferenced
CREATE INDEX payloads_unreferenced ON payloads (id) WHERE refs <= 0;

-- index replays_shard
CREATE INDEX replays_shard ON replays (shard, run_rid);

-- index run_actions_open
CREATE INDEX run_actions_open ON run_actions (action, spec) WHERE phase = 'open';

-- index runs_finished
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;

-- index runs_parent
CREATE UNIQUE INDEX runs_parent ON runs (parent_rid, parent_pos) WHERE parent_rid IS NOT NULL;

-- index runs_status
CREATE INDEX runs_status ON runs (status, rid);

-- index runs_workflow
CREATE INDEX runs_workflow ON runs (workflow, status, rid);

-- index schedules_due
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE paused = 0;

-- index tasks_claimed
CREATE INDEX tasks_claimed ON tasks (claim_engine) WHERE claim_token IS NOT NULL;

-- index tasks_parked
CREATE INDEX tasks_parked ON tasks (parked, run_rid, pos) WHERE parked IS NOT NULL;

-- index tasks_queued
CREATE INDEX tasks_queued ON tasks (shard, order_rid, run_rid, pos, not_before)
    WHERE claim_token IS NULL AND parked IS NULL;

-- index tasks_token
CREATE INDEX tasks_token ON tasks (claim_token) WHERE claim_token IS NOT NULL;

-- index timers_due
CREATE INDEX timers_due ON timers (fire_at);

-- table engine_metrics
CREATE TABLE engine_metrics (
    engine_id  INTEGER PRIMARY KEY,
    snapshot   BLOB NOT NULL,
    updated_at REAL NOT NULL
);

-- table engines
CREATE TABLE engines (
    id           INTEGER PRIMARY KEY,
    epoch        INTEGER NOT NULL,
    pid          INTEGER NOT NULL,
    host         TEXT NOT NULL,
    state        TEXT NOT NULL,             -- running | draining | stopped | dead
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);

-- table limit_state
CREATE TABLE limit_state (
    engine_id  INTEGER PRIMARY KEY,
    snapshot   BLOB NOT NULL,          -- JSON
    updated_at REAL NOT NULL
);

-- table mailbox
CREATE TABLE mailbox (
    id           INTEGER PRIMARY KEY,
    run_rid      INTEGER NOT NULL,
    topic        TEXT NOT NULL,
    payload      BLOB NOT NULL,          -- JSON
    dedup_key    TEXT,                   -- Client.signal(key=): a repeated send is a no-op
    created_at   REAL NOT NULL,
    consumed_pos INTEGER                 -- the wait (journal position) that took it; NULL: unread
);

-- table meta
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- table payloads
CREATE TABLE payloads (
    -- AUTOINCREMENT: an id is never reused, so a cached payload can never be mistaken for another.
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    digest     BLOB NOT NULL UNIQUE,    -- blake2b-128 of the encoded (uncompressed) bytes
    size       INTEGER NOT NULL,        -- encoded bytes
    codec      TEXT NOT NULL,           -- format of data (or of the file): json | zlib
    data       BLOB,                    -- NULL when the payload is in a file
    file       TEXT,                    -- its file in the folder <database>.payloads, when large
    refs       INTEGER NOT NULL DEFAULT 0,  -- references from rows, kept by the triggers below
    created_at REAL NOT NULL
);

-- table replays
CREATE TABLE replays (
    run_rid    INTEGER PRIMARY KEY,
    shard      INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    created_at REAL NOT NULL
);

-- table run_actions
CREATE TABLE run_actions (
    id         INTEGER PRIMARY KEY,
    action     TEXT NOT NULL,           -- cancel | retry | resume | fail | purge
    spec       TEXT NOT NULL,           -- JSON: the filter as given and the parameters
    filter     TEXT NOT NULL,           -- JSON: the filter with relative times resolved
    phase      TEXT NOT NULL,           -- open | done
    cutoff_rid INTEGER NOT NULL,
    cursor_rid INTEGER NOT NULL DEFAULT 0,
    acted      INTEGER NOT NULL DEFAULT 0,  -- runs changed
    skipped    INTEGER NOT NULL DEFAULT 0,  -- runs matched but no longer in a state to act on
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- table run_events
CREATE TABLE run_events (
    run_rid    INTEGER NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,            -- JSON
    pos        INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (run_rid, key)
) WITHOUT ROWID;

-- table runs
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
, concurrency_key TEXT, parent_rid INTEGER, parent_pos INTEGER, root_rid INTEGER, generation INTEGER NOT NULL DEFAULT 0, labels TEXT, seed TEXT, clock_origin REAL, forked_from TEXT, forked_at INTEGER);

-- table samples
CREATE TABLE samples (
    engine_id      INTEGER NOT NULL,
    at             REAL NOT NULL,
    steps          INTEGER NOT NULL,   -- steps finished (succeeded or failed for good)
    step_failures  INTEGER NOT NULL,   -- failed attempts (retried or for good)
    runs_finished  INTEGER NOT NULL,
    queued         INTEGER NOT NULL,   -- queued tasks, every shard
    oldest_queued_s REAL,              -- age of the oldest queued task's run
    in_flight      INTEGER NOT NULL,
    slots          INTEGER NOT NULL,
    replay_backlog INTEGER NOT NULL,
    rate_limited   INTEGER NOT NULL,   -- 429s (RateLimited) seen
    limits         BLOB,               -- JSON {limit: {"saturation": 0..1, "rate_limited": n}}
    PRIMARY KEY (at, engine_id)
) WITHOUT ROWID;

-- table schedules
CREATE TABLE schedules (
    name         TEXT PRIMARY KEY,
    workflow     TEXT NOT NULL,
    cron         TEXT NOT NULL,
    timezone     TEXT NOT NULL,
    args         BLOB NOT NULL,           -- JSON array, after the tick time
    catchup      TEXT NOT NULL,           -- skip | once | all
    overlap      TEXT NOT NULL,           -- skip | allow | cancel
    source       TEXT NOT NULL,           -- config ([schedules.NAME]) | client (Client.schedule)
    paused       INTEGER NOT NULL DEFAULT 0,
    next_fire_at REAL NOT NULL,           -- the first tick not handled yet
    last_fire_at REAL,                    -- the latest tick a run was started for
    last_run_id  TEXT,                    -- that run (the overlap policy looks at it)
    fired        INTEGER NOT NULL DEFAULT 0,  -- runs started
    skipped      INTEGER NOT NULL DEFAULT 0,  -- ticks not started (catch-up or overlap policy)
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
);

-- table shard_leases
CREATE TABLE shard_leases (
    shard      INTEGER PRIMARY KEY,
    owner      INTEGER,                    -- engines.id; NULL: free
    epoch      INTEGER NOT NULL DEFAULT 0, -- +1 on every change of owner, never down
    expires_at REAL                        -- unix seconds; NULL when free
);

-- table sqlite_sequence
CREATE TABLE sqlite_sequence(name,seq);

-- table steps
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
    finished_at REAL, limit_key TEXT, started_at REAL,
    PRIMARY KEY (run_rid, pos)
) WITHOUT ROWID;

-- table tasks
CREATE TABLE tasks (
    run_rid      INTEGER NOT NULL,
    pos          INTEGER NOT NULL,
    shard        INTEGER NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 1,
    not_before   REAL NOT NULL DEFAULT 0,
    claim_token  INTEGER,
    claim_engine INTEGER,
    claim_epoch  INTEGER,
    claimed_at   REAL, parked TEXT, order_rid INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_rid, pos)
) WITHOUT ROWID;

-- table timers
CREATE TABLE timers (
    run_rid INTEGER NOT NULL,
    pos     INTEGER NOT NULL,
    shard   INTEGER NOT NULL,
    fire_at REAL NOT NULL, kind TEXT,
    PRIMARY KEY (run_rid, pos)
) WITHOUT ROWID;

-- table waits
CREATE TABLE waits (
    run_rid INTEGER NOT NULL,
    topic   TEXT NOT NULL,
    pos     INTEGER NOT NULL,
    PRIMARY KEY (run_rid, topic, pos)
) WITHOUT ROWID;

-- trigger runs_payloads_delete
CREATE TRIGGER runs_payloads_delete AFTER DELETE ON runs
WHEN substr(OLD.args, 1, 1) IN (x'00', x'01') OR substr(OLD.result, 1, 1) IN (x'00', x'01')
BEGIN
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.args, 2) AS INTEGER) WHERE substr(OLD.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.args, 1, 1) = x'01' THEN CAST(substr(OLD.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.result, 2) AS INTEGER) WHERE substr(OLD.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.result, 1, 1) = x'01' THEN CAST(substr(OLD.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
END;

-- trigger runs_payloads_insert
CREATE TRIGGER runs_payloads_insert AFTER INSERT ON runs
WHEN substr(NEW.args, 1, 1) IN (x'00', x'01') OR substr(NEW.result, 1, 1) IN (x'00', x'01')
BEGIN
    UPDATE payloads SET refs = refs + 1 WHERE id IN (
        SELECT CAST(substr(NEW.args, 2) AS INTEGER) WHERE substr(NEW.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.args, 1, 1) = x'01' THEN CAST(substr(NEW.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    SELECT RAISE(ABORT, 'reference to a missing payload')
    WHERE substr(NEW.args, 1, 1) IN (x'00', x'01') AND changes() < (
        SELECT count(*) FROM (SELECT CAST(substr(NEW.args, 2) AS INTEGER) WHERE substr(NEW.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.args, 1, 1) = x'01' THEN CAST(substr(NEW.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer')
    );
    UPDATE payloads SET refs = refs + 1 WHERE id IN (
        SELECT CAST(substr(NEW.result, 2) AS INTEGER) WHERE substr(NEW.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.result, 1, 1) = x'01' THEN CAST(substr(NEW.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    SELECT RAISE(ABORT, 'reference to a missing payload')
    WHERE substr(NEW.result, 1, 1) IN (x'00', x'01') AND changes() < (
        SELECT count(*) FROM (SELECT CAST(substr(NEW.result, 2) AS INTEGER) WHERE substr(NEW.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.result, 1, 1) = x'01' THEN CAST(substr(NEW.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer')
    );
END;

-- trigger runs_payloads_update_args
CREATE TRIGGER runs_payloads_update_args AFTER UPDATE OF args ON runs
WHEN OLD.args IS NOT NEW.args
  AND (substr(OLD.args, 1, 1) IN (x'00', x'01') OR substr(NEW.args, 1, 1) IN (x'00', x'01'))
BEGIN
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.args, 2) AS INTEGER) WHERE substr(OLD.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.args, 1, 1) = x'01' THEN CAST(substr(OLD.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    UPDATE payloads SET refs = refs + 1 WHERE id IN (
        SELECT CAST(substr(NEW.args, 2) AS INTEGER) WHERE substr(NEW.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.args, 1, 1) = x'01' THEN CAST(substr(NEW.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    SELECT RAISE(ABORT, 'reference to a missing payload')
    WHERE substr(NEW.args, 1, 1) IN (x'00', x'01') AND changes() < (
        SELECT count(*) FROM (SELECT CAST(substr(NEW.args, 2) AS INTEGER) WHERE substr(NEW.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.args, 1, 1) = x'01' THEN CAST(substr(NEW.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer')
    );
END;

-- trigger runs_payloads_update_result
CREATE TRIGGER runs_payloads_update_result AFTER UPDATE OF result ON runs
WHEN OLD.result IS NOT NEW.result
  AND (substr(OLD.result, 1, 1) IN (x'00', x'01') OR substr(NEW.result, 1, 1) IN (x'00', x'01'))
BEGIN
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.result, 2) AS INTEGER) WHERE substr(OLD.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.result, 1, 1) = x'01' THEN CAST(substr(OLD.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    UPDATE payloads SET refs = refs + 1 WHERE id IN (
        SELECT CAST(substr(NEW.result, 2) AS INTEGER) WHERE substr(NEW.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.result, 1, 1) = x'01' THEN CAST(substr(NEW.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    SELECT RAISE(ABORT, 'reference to a missing payload')
    WHERE substr(NEW.result, 1, 1) IN (x'00', x'01') AND changes() < (
        SELECT count(*) FROM (SELECT CAST(substr(NEW.result, 2) AS INTEGER) WHERE substr(NEW.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.result, 1, 1) = x'01' THEN CAST(substr(NEW.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer')
    );
END;

-- trigger steps_payloads_delete
CREATE TRIGGER steps_payloads_delete AFTER DELETE ON steps
WHEN substr(OLD.args, 1, 1) IN (x'00', x'01') OR substr(OLD.result, 1, 1) IN (x'00', x'01')
BEGIN
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.args, 2) AS INTEGER) WHERE substr(OLD.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.args, 1, 1) = x'01' THEN CAST(substr(OLD.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.result, 2) AS INTEGER) WHERE substr(OLD.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.result, 1, 1) = x'01' THEN CAST(substr(OLD.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
END;

-- trigger steps_payloads_insert
CREATE TRIGGER steps_payloads_insert AFTER INSERT ON steps
WHEN substr(NEW.args, 1, 1) IN (x'00', x'01') OR substr(NEW.result, 1, 1) IN (x'00', x'01')
BEGIN
    UPDATE payloads SET refs = refs + 1 WHERE id IN (
        SELECT CAST(substr(NEW.args, 2) AS INTEGER) WHERE substr(NEW.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.args, 1, 1) = x'01' THEN CAST(substr(NEW.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    SELECT RAISE(ABORT, 'reference to a missing payload')
    WHERE substr(NEW.args, 1, 1) IN (x'00', x'01') AND changes() < (
        SELECT count(*) FROM (SELECT CAST(substr(NEW.args, 2) AS INTEGER) WHERE substr(NEW.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.args, 1, 1) = x'01' THEN CAST(substr(NEW.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer')
    );
    UPDATE payloads SET refs = refs + 1 WHERE id IN (
        SELECT CAST(substr(NEW.result, 2) AS INTEGER) WHERE substr(NEW.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.result, 1, 1) = x'01' THEN CAST(substr(NEW.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    SELECT RAISE(ABORT, 'reference to a missing payload')
    WHERE substr(NEW.result, 1, 1) IN (x'00', x'01') AND changes() < (
        SELECT count(*) FROM (SELECT CAST(substr(NEW.result, 2) AS INTEGER) WHERE substr(NEW.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.result, 1, 1) = x'01' THEN CAST(substr(NEW.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer')
    );
END;

-- trigger steps_payloads_update_args
CREATE TRIGGER steps_payloads_update_args AFTER UPDATE OF args ON steps
WHEN OLD.args IS NOT NEW.args
  AND (substr(OLD.args, 1, 1) IN (x'00', x'01') OR substr(NEW.args, 1, 1) IN (x'00', x'01'))
BEGIN
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.args, 2) AS INTEGER) WHERE substr(OLD.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.args, 1, 1) = x'01' THEN CAST(substr(OLD.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    UPDATE payloads SET refs = refs + 1 WHERE id IN (
        SELECT CAST(substr(NEW.args, 2) AS INTEGER) WHERE substr(NEW.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.args, 1, 1) = x'01' THEN CAST(substr(NEW.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    SELECT RAISE(ABORT, 'reference to a missing payload')
    WHERE substr(NEW.args, 1, 1) IN (x'00', x'01') AND changes() < (
        SELECT count(*) FROM (SELECT CAST(substr(NEW.args, 2) AS INTEGER) WHERE substr(NEW.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.args, 1, 1) = x'01' THEN CAST(substr(NEW.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer')
    );
END;

-- trigger steps_payloads_update_result
CREATE TRIGGER steps_payloads_update_result AFTER UPDATE OF result ON steps
WHEN OLD.result IS NOT NEW.result
  AND (substr(OLD.result, 1, 1) IN (x'00', x'01') OR substr(NEW.result, 1, 1) IN (x'00', x'01'))
BEGIN
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.result, 2) AS INTEGER) WHERE substr(OLD.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.result, 1, 1) = x'01' THEN CAST(substr(OLD.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    UPDATE payloads SET refs = refs + 1 WHERE id IN (
        SELECT CAST(substr(NEW.result, 2) AS INTEGER) WHERE substr(NEW.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.result, 1, 1) = x'01' THEN CAST(substr(NEW.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    SELECT RAISE(ABORT, 'reference to a missing payload')
    WHERE substr(NEW.result, 1, 1) IN (x'00', x'01') AND changes() < (
        SELECT count(*) FROM (SELECT CAST(substr(NEW.result, 2) AS INTEGER) WHERE substr(NEW.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(NEW.result, 1, 1) = x'01' THEN CAST(substr(NEW.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer')
    );
END;
