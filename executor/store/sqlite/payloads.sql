-- The payload store (store/payloads.py; the table and its triggers: migrations/0004_payloads.sql).

-- name: payload_by_digest
SELECT id FROM payloads WHERE digest = ?;

-- name: insert_payload_new
-- Insert, unless a payload with these bytes is stored already (then no change: the caller reads
-- its row with payload_by_digest_file). No RETURNING: SQLite buffers a RETURNING statement's rows
-- in a temporary table it opens and closes on every run, 10 of the 23 us of this insert with 16
-- KiB pages (store/payloads.py reads the cursor's lastrowid instead).
INSERT INTO payloads (digest, size, codec, data, file, created_at)
VALUES (:digest, :size, :codec, :data, :file, :now)
ON CONFLICT (digest) DO NOTHING;

-- name: payload_by_digest_file
SELECT id, file FROM payloads WHERE digest = ?;

-- name: insert_payload_row
-- A result stored as its own row under a unique key (store/payloads.py, put): no lookup, and a
-- key that repeats fails on the unique index instead of naming another payload. No RETURNING:
-- see insert_payload_new.
INSERT INTO payloads (digest, size, codec, data, file, created_at)
VALUES (:key, :size, :codec, :data, NULL, :now);

-- name: payload_digest
SELECT digest FROM payloads WHERE id = ?;

-- name: select_payload
SELECT codec, data, file, size, digest FROM payloads WHERE id = ?;

-- name: unreferenced_payloads
SELECT id, file FROM payloads WHERE refs <= 0 AND created_at < :before;

-- name: delete_payload
DELETE FROM payloads WHERE id = ? AND refs <= 0 RETURNING size;

-- name: payload_files
SELECT file FROM payloads WHERE file IS NOT NULL;

-- name: payload_file_exists
SELECT 1 FROM payloads WHERE file = ?;

-- name: payload_stats
SELECT count(*), coalesce(sum(size), 0), coalesce(sum(length(data)), 0), count(file)
FROM payloads;

-- name: check_missing_payloads
-- Rows referring to a payload that does not exist (the triggers refuse them: never expected).
WITH refs (what, rid, pos, id) AS (
    SELECT 'steps.args', run_rid, pos, CAST(substr(args, 2) AS INTEGER) FROM steps
    WHERE substr(args, 1, 1) = x'00'
    UNION ALL
    SELECT 'steps.args', run_rid, pos, j.value
    FROM steps, json_each(CAST(substr(args, 2) AS TEXT)) AS j
    WHERE substr(args, 1, 1) = x'01' AND j.type = 'integer'
    UNION ALL
    SELECT 'steps.result', run_rid, pos, CAST(substr(result, 2) AS INTEGER) FROM steps
    WHERE substr(result, 1, 1) = x'00'
    UNION ALL
    SELECT 'runs.args', rid, NULL, CAST(substr(args, 2) AS INTEGER) FROM runs
    WHERE substr(args, 1, 1) = x'00'
    UNION ALL
    SELECT 'runs.args', rid, NULL, j.value
    FROM runs, json_each(CAST(substr(args, 2) AS TEXT)) AS j
    WHERE substr(args, 1, 1) = x'01' AND j.type = 'integer'
    UNION ALL
    SELECT 'runs.result', rid, NULL, CAST(substr(result, 2) AS INTEGER) FROM runs
    WHERE substr(result, 1, 1) = x'00'
)
SELECT r.id, refs.what, refs.pos, refs.id
FROM refs LEFT JOIN runs AS r ON r.rid = refs.rid
WHERE NOT EXISTS (SELECT 1 FROM payloads AS p WHERE p.id = refs.id);

-- name: check_payload_refcounts
-- Each payload's reference count against the rows that refer to it (a row counts once).
WITH refs (id) AS (
    SELECT CAST(substr(args, 2) AS INTEGER) FROM steps WHERE substr(args, 1, 1) = x'00'
    UNION ALL
    SELECT j.value FROM steps, json_each(CAST(substr(args, 2) AS TEXT)) AS j
    WHERE substr(args, 1, 1) = x'01' AND j.type = 'integer'
    GROUP BY run_rid, pos, j.value
    UNION ALL
    SELECT CAST(substr(result, 2) AS INTEGER) FROM steps WHERE substr(result, 1, 1) = x'00'
    UNION ALL
    SELECT CAST(substr(args, 2) AS INTEGER) FROM runs WHERE substr(args, 1, 1) = x'00'
    UNION ALL
    SELECT j.value FROM runs, json_each(CAST(substr(args, 2) AS TEXT)) AS j
    WHERE substr(args, 1, 1) = x'01' AND j.type = 'integer'
    GROUP BY rid, j.value
    UNION ALL
    SELECT CAST(substr(result, 2) AS INTEGER) FROM runs WHERE substr(result, 1, 1) = x'00'
),
counted (id, n) AS (SELECT id, count(*) FROM refs GROUP BY id)
SELECT p.id, p.refs, coalesce(c.n, 0)
FROM payloads AS p LEFT JOIN counted AS c ON c.id = p.id
WHERE p.refs != coalesce(c.n, 0);
