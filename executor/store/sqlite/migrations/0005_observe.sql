-- What `executor show`, the metrics and the dashboard read (docs/OBSERVABILITY.md).

-- When the step's first attempt was claimed: a step's duration runs from here to finished_at,
-- without the time it sat in the queue (created_at is when it was scheduled).
ALTER TABLE steps ADD COLUMN started_at REAL;

-- One small row per engine heartbeat, so the dashboard can plot the last hour without an engine
-- and its history survives restarts. Counters are cumulative since the engine started (a new
-- engine starts from 0: readers take differences per engine). Rows older than a day go away.
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

-- Each engine's cumulative metrics (counters and histograms, JSON), rewritten every heartbeat:
-- `executor serve` and the daemon's optional endpoint export them from here.
CREATE TABLE engine_metrics (
    engine_id  INTEGER PRIMARY KEY,
    snapshot   BLOB NOT NULL,
    updated_at REAL NOT NULL
);
