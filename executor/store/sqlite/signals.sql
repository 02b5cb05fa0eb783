-- Signals and published state (executor/store/signals.py): the mailbox, pending waits, and the
-- latest value of each key a run published.

-- name: run_for_signal
SELECT rid, status FROM runs WHERE id = ?;

-- name: message_with_key
SELECT 1 FROM mailbox WHERE run_rid = ? AND dedup_key = ?;

-- name: insert_message
INSERT INTO mailbox (run_rid, topic, payload, dedup_key, created_at)
VALUES (:rid, :topic, :payload, :key, :now)
RETURNING id;

-- name: oldest_wait_of_topic
-- A signal goes to the earliest pending wait of its topic (positions are the code's order).
SELECT pos FROM waits WHERE run_rid = ? AND topic = ? ORDER BY pos LIMIT 1;

-- name: oldest_unread_of_topics
-- A new wait takes the oldest unread message of any of its topics (a JSON array).
SELECT id, topic, payload FROM mailbox
WHERE run_rid = :rid AND consumed_pos IS NULL
  AND topic IN (SELECT value FROM json_each(:topics))
ORDER BY id LIMIT 1;

-- name: consume_message
UPDATE mailbox SET consumed_pos = ? WHERE id = ? AND consumed_pos IS NULL;

-- name: insert_wait
INSERT OR IGNORE INTO waits (run_rid, topic, pos) VALUES (?, ?, ?);

-- name: delete_waits_at
DELETE FROM waits WHERE run_rid = ? AND pos = ?;

-- name: delete_waits_of_run
DELETE FROM waits WHERE run_rid = ?;

-- name: insert_wait_timer
INSERT OR IGNORE INTO timers (run_rid, pos, shard, fire_at, kind) VALUES (?, ?, ?, ?, 'wait');

-- name: insert_settled_step
-- A journal entry that is done when it is written (a published value): succeeded, no seq, since
-- the code never waits for it.
INSERT OR IGNORE INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at,
                             finished_at)
VALUES (?, ?, ?, ?, ?, ?, 'succeeded', ?, ?);

-- name: upsert_event
INSERT INTO run_events (run_rid, key, value, pos, updated_at)
VALUES (:rid, :key, :value, :pos, :now)
ON CONFLICT (run_rid, key) DO UPDATE
SET value = excluded.value, pos = excluded.pos, updated_at = excluded.updated_at
WHERE excluded.pos >= run_events.pos;

-- name: select_event
SELECT r.status, e.value, e.updated_at
FROM runs AS r LEFT JOIN run_events AS e ON e.run_rid = r.rid AND e.key = :key
WHERE r.id = :id;

-- name: select_events_of_run
SELECT e.key, e.value FROM runs AS r JOIN run_events AS e ON e.run_rid = r.rid
WHERE r.id = ? ORDER BY e.key;

-- name: unread_messages_of_run
SELECT m.topic, count(*) FROM runs AS r JOIN mailbox AS m ON m.run_rid = r.rid
WHERE r.id = ? AND m.consumed_pos IS NULL GROUP BY m.topic ORDER BY m.topic;

-- name: pending_waits_of_run
SELECT w.pos, group_concat(w.topic, '|'), t.fire_at
FROM runs AS r JOIN waits AS w ON w.run_rid = r.rid
LEFT JOIN timers AS t ON t.run_rid = w.run_rid AND t.pos = w.pos
WHERE r.id = ? GROUP BY w.pos ORDER BY w.pos;
