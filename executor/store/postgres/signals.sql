-- Signals and published state (executor/store/signals.py) on PostgreSQL: the names and
-- parameters of ../sqlite/signals.sql.

-- name: run_for_signal
-- Locked: a signal and the run's own journal writers take turns on the run row.
SELECT rid, status FROM runs WHERE id = %s FOR NO KEY UPDATE;

-- name: message_with_key
SELECT 1 FROM mailbox WHERE run_rid = %s AND dedup_key = %s;

-- name: insert_message
INSERT INTO mailbox (run_rid, topic, payload, dedup_key, created_at)
VALUES (%(rid)s, %(topic)s, %(payload)s, %(key)s, %(now)s)
RETURNING id;

-- name: oldest_wait_of_topic
-- A signal goes to the earliest pending wait of its topic (positions are the code's order).
SELECT pos FROM waits WHERE run_rid = %s AND topic = %s ORDER BY pos LIMIT 1;

-- name: oldest_unread_of_topics
-- A new wait takes the oldest unread message of any of its topics (a JSON array).
SELECT id, topic, payload FROM mailbox
WHERE run_rid = %(rid)s AND consumed_pos IS NULL
  AND topic = ANY (ARRAY(SELECT jsonb_array_elements_text(%(topics)s::jsonb)))
ORDER BY id LIMIT 1;

-- name: consume_message
UPDATE mailbox SET consumed_pos = %s WHERE id = %s AND consumed_pos IS NULL;

-- name: insert_wait
INSERT INTO waits (run_rid, topic, pos) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING;

-- name: delete_waits_at
DELETE FROM waits WHERE run_rid = %s AND pos = %s;

-- name: delete_waits_of_run
DELETE FROM waits WHERE run_rid = %s;

-- name: insert_wait_timer
INSERT INTO timers (run_rid, pos, shard, fire_at, kind) VALUES (%s, %s, %s, %s, 'wait')
ON CONFLICT DO NOTHING;

-- name: insert_settled_step
-- A journal entry that is done when it is written (a published value): succeeded, no seq, since
-- the code never waits for it.
INSERT INTO steps (run_rid, pos, kind, name, fingerprint, args, status, created_at, finished_at)
VALUES (%s, %s, %s, %s, %s, %s, 'succeeded', %s, %s)
ON CONFLICT DO NOTHING;

-- name: upsert_event
INSERT INTO run_events (run_rid, key, value, pos, updated_at)
VALUES (%(rid)s, %(key)s, %(value)s, %(pos)s, %(now)s)
ON CONFLICT (run_rid, key) DO UPDATE
SET value = excluded.value, pos = excluded.pos, updated_at = excluded.updated_at
WHERE excluded.pos >= run_events.pos;

-- name: select_event
SELECT r.status, e.value, e.updated_at
FROM runs AS r LEFT JOIN run_events AS e ON e.run_rid = r.rid AND e.key = %(key)s
WHERE r.id = %(id)s;

-- name: select_events_of_run
SELECT e.key, e.value FROM runs AS r JOIN run_events AS e ON e.run_rid = r.rid
WHERE r.id = %s ORDER BY e.key;

-- name: unread_messages_of_run
SELECT m.topic, count(*) FROM runs AS r JOIN mailbox AS m ON m.run_rid = r.rid
WHERE r.id = %s AND m.consumed_pos IS NULL GROUP BY m.topic ORDER BY m.topic;

-- name: pending_waits_of_run
SELECT w.pos, string_agg(w.topic, '|' ORDER BY w.topic), max(t.fire_at)
FROM runs AS r JOIN waits AS w ON w.run_rid = r.rid
LEFT JOIN timers AS t ON t.run_rid = w.run_rid AND t.pos = w.pos
WHERE r.id = %s GROUP BY w.pos ORDER BY w.pos;
