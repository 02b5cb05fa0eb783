-- Repair at scale (issue 11): retry in place and fork, labels, actions on runs by filter,
-- retention.

-- Bumped by every retry in place. A replay built from an older generation of the journal is
-- dropped at commit, and an engine rebuilds a live instance whose generation is behind.
ALTER TABLE runs ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
-- A few short strings given at start ({"batch": "2026-11-27"}), JSON; NULL: none.
ALTER TABLE runs ADD COLUMN labels TEXT;
-- What ctx.random()/ctx.uuid() are seeded with and where ctx.now() starts: NULL means the run's
-- own id and created_at. A fork inherits its source's, so the kept prefix sees the same values.
ALTER TABLE runs ADD COLUMN seed TEXT;
ALTER TABLE runs ADD COLUMN clock_origin REAL;
-- The run a fork was made from (its public id), and the journal position it was forked at.
ALTER TABLE runs ADD COLUMN forked_from TEXT;
ALTER TABLE runs ADD COLUMN forked_at INTEGER;

-- Retention and `runs purge` look for finished runs by when they finished.
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;
-- Filters by workflow (and status) walk runs of one workflow only.
CREATE INDEX runs_workflow ON runs (workflow, status, rid);

-- An action on runs by filter (`executor runs retry|cancel|resume|fail|purge`). It works in short
-- batches in rid order; each batch's transaction also moves cursor_rid, so an action cut by a
-- crash continues where it stopped, and acts on each run once. Runs started after the action
-- (rid > cutoff_rid) are never touched.
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
CREATE INDEX run_actions_open ON run_actions (action, spec) WHERE phase = 'open';
