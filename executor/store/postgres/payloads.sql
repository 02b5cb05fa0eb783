-- The payload store (store/payloads.py) on PostgreSQL: the names and parameters of
-- ../sqlite/payloads.sql. A reference in a row is the byte 0x00 and the id in decimal digits, or
-- the byte 0x01 and a JSON array whose numbers are ids (store/payloads.py).

-- name: payload_by_digest
SELECT id FROM payloads WHERE digest = %s;

-- name: insert_payload
-- Insert or get, in one statement (store/payloads.py). Two writers may store the same bytes at
-- once: the second gets the first's row. The update also locks the row until this transaction
-- ends, so a purge cannot delete it between here and the reference that counts it.
INSERT INTO payloads (digest, size, codec, data, file, created_at)
VALUES (%(digest)s, %(size)s, %(codec)s, %(data)s, %(file)s, %(now)s)
ON CONFLICT (digest) DO UPDATE SET digest = excluded.digest
RETURNING id, file;

-- name: insert_payload_unshared
-- A result stored as its own row under a unique key (store/payloads.py, put): no lookup, and a
-- key that repeats fails on the unique index instead of naming another payload.
INSERT INTO payloads (digest, size, codec, data, file, created_at)
VALUES (%(key)s, %(size)s, %(codec)s, %(data)s, NULL, %(now)s)
RETURNING id;

-- name: payload_digest
SELECT digest FROM payloads WHERE id = %s;

-- name: select_payload
SELECT codec, data, file, size, digest FROM payloads WHERE id = %s;

-- name: unreferenced_payloads
SELECT id, file FROM payloads WHERE refs <= 0 AND created_at < %(before)s;

-- name: delete_payload
DELETE FROM payloads WHERE id = %s AND refs <= 0 RETURNING size;

-- name: payload_files
SELECT file FROM payloads WHERE file IS NOT NULL;

-- name: payload_file_exists
SELECT 1 FROM payloads WHERE file = %s;

-- name: payload_stats
SELECT count(*), coalesce(sum(size), 0)::bigint, coalesce(sum(octet_length(data)), 0)::bigint,
       count(file)
FROM payloads;

-- name: check_missing_payloads
-- Rows referring to a payload that does not exist (the triggers refuse them: never expected).
WITH held (what, rid, pos, b) AS (
    SELECT 'steps.args', run_rid, pos, args FROM steps
    WHERE substr(args, 1, 1) IN ('\x00'::bytea, '\x01'::bytea)
    UNION ALL
    SELECT 'steps.result', run_rid, pos, result FROM steps
    WHERE substr(result, 1, 1) IN ('\x00'::bytea, '\x01'::bytea)
    UNION ALL
    SELECT 'runs.args', rid, NULL, args FROM runs
    WHERE substr(args, 1, 1) IN ('\x00'::bytea, '\x01'::bytea)
    UNION ALL
    SELECT 'runs.result', rid, NULL, result FROM runs
    WHERE substr(result, 1, 1) IN ('\x00'::bytea, '\x01'::bytea)
), refs (what, rid, pos, id) AS (
    SELECT what, rid, pos, convert_from(substr(b, 2), 'UTF8')::bigint FROM held
    WHERE substr(b, 1, 1) = '\x00'::bytea
    UNION ALL
    SELECT what, rid, pos, j.value::text::bigint
    FROM held, jsonb_array_elements(convert_from(substr(b, 2), 'UTF8')::jsonb) AS j (value)
    WHERE substr(b, 1, 1) = '\x01'::bytea AND jsonb_typeof(j.value) = 'number'
)
SELECT r.id, refs.what, refs.pos, refs.id
FROM refs LEFT JOIN runs AS r ON r.rid = refs.rid
WHERE NOT EXISTS (SELECT 1 FROM payloads AS p WHERE p.id = refs.id);

-- name: check_payload_refcounts
-- Each payload's reference count against the rows that refer to it (a row counts once).
WITH held (what, rid, pos, b) AS (
    SELECT 'steps.args', run_rid, pos, args FROM steps WHERE substr(args, 1, 1) IN ('\x00'::bytea, '\x01'::bytea)
    UNION ALL
    SELECT 'steps.result', run_rid, pos, result FROM steps
    WHERE substr(result, 1, 1) IN ('\x00'::bytea, '\x01'::bytea)
    UNION ALL
    SELECT 'runs.args', rid, NULL, args FROM runs WHERE substr(args, 1, 1) IN ('\x00'::bytea, '\x01'::bytea)
    UNION ALL
    SELECT 'runs.result', rid, NULL, result FROM runs WHERE substr(result, 1, 1) IN ('\x00'::bytea, '\x01'::bytea)
), refs (id) AS (
    SELECT convert_from(substr(b, 2), 'UTF8')::bigint FROM held
    WHERE substr(b, 1, 1) = '\x00'::bytea
    UNION ALL
    SELECT DISTINCT ON (h.what, h.rid, h.pos, j.value) j.value::text::bigint
    FROM held AS h, jsonb_array_elements(convert_from(substr(h.b, 2), 'UTF8')::jsonb) AS j (value)
    WHERE substr(h.b, 1, 1) = '\x01'::bytea AND jsonb_typeof(j.value) = 'number'
), counted (id, n) AS (SELECT id, count(*) FROM refs GROUP BY id)
SELECT p.id, p.refs, coalesce(c.n, 0)
FROM payloads AS p LEFT JOIN counted AS c ON c.id = p.id
WHERE p.refs <> coalesce(c.n, 0);
