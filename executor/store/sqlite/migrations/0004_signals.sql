-- Signals (ctx.wait_for, Client.signal) and published state (ctx.set_event, Client.get_event).
-- steps.kind gains two values: wait (ctx.wait_for) and event (ctx.set_event, settled when written).

-- Messages sent to a run. id is the arrival order: a topic's messages are taken in that order.
-- A message sent before the run waits for it stays here, unread, until a wait takes it.
CREATE TABLE mailbox (
    id           INTEGER PRIMARY KEY,
    run_rid      INTEGER NOT NULL,
    topic        TEXT NOT NULL,
    payload      BLOB NOT NULL,          -- JSON
    dedup_key    TEXT,                   -- Client.signal(key=): a repeated send is a no-op
    created_at   REAL NOT NULL,
    consumed_pos INTEGER                 -- the wait (journal position) that took it; NULL: unread
);
CREATE UNIQUE INDEX mailbox_dedup ON mailbox (run_rid, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX mailbox_unread ON mailbox (run_rid, topic, id) WHERE consumed_pos IS NULL;

-- A pending wait, one row per topic it listens to. Rows go away in the transaction that records
-- the wait (a message or its timeout), so a signal finds the oldest pending wait of its topic.
CREATE TABLE waits (
    run_rid INTEGER NOT NULL,
    topic   TEXT NOT NULL,
    pos     INTEGER NOT NULL,
    PRIMARY KEY (run_rid, topic, pos)
) WITHOUT ROWID;

-- NULL: a durable sleep; 'wait': the timeout of a wait, recorded as a WaitTimeout failure.
ALTER TABLE timers ADD COLUMN kind TEXT;

-- The latest value of each key a run published (ctx.set_event), and the journal position that
-- wrote it: a replay of an older position never overwrites a newer value.
CREATE TABLE run_events (
    run_rid    INTEGER NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,            -- JSON
    pos        INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (run_rid, key)
) WITHOUT ROWID;
