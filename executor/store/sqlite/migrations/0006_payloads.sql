-- The payload store (store/payloads.py): arguments and results above a size are stored once, by
-- content, out of the journal rows. A row then holds a reference instead of JSON: the byte 0x00
-- and the payload's id in decimal digits, or (arguments with a large element) the byte 0x01 and a
-- JSON array with one item per argument: a string holding the argument's JSON, or the id of the
-- stored payload holding it. JSON never starts with 0x00 or 0x01, so old rows read as before.

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
-- Retention deletes what no row references; new payloads wait for their first reference.
CREATE INDEX payloads_unreferenced ON payloads (id) WHERE refs <= 0;

-- Every row that stores a payload keeps its refcount through these triggers, so no code path
-- (a fork copying a journal, a purge deleting one) can forget it. A reference to a payload that
-- does not exist aborts the statement: never a dangling reference.

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

CREATE TRIGGER steps_payloads_update AFTER UPDATE OF args, result ON steps
WHEN substr(OLD.args, 1, 1) IN (x'00', x'01') OR substr(OLD.result, 1, 1) IN (x'00', x'01')
  OR substr(NEW.args, 1, 1) IN (x'00', x'01') OR substr(NEW.result, 1, 1) IN (x'00', x'01')
BEGIN
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.args, 2) AS INTEGER) WHERE substr(OLD.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.args, 1, 1) = x'01' THEN CAST(substr(OLD.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.result, 2) AS INTEGER) WHERE substr(OLD.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.result, 1, 1) = x'01' THEN CAST(substr(OLD.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
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

CREATE TRIGGER runs_payloads_update AFTER UPDATE OF args, result ON runs
WHEN substr(OLD.args, 1, 1) IN (x'00', x'01') OR substr(OLD.result, 1, 1) IN (x'00', x'01')
  OR substr(NEW.args, 1, 1) IN (x'00', x'01') OR substr(NEW.result, 1, 1) IN (x'00', x'01')
BEGIN
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.args, 2) AS INTEGER) WHERE substr(OLD.args, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.args, 1, 1) = x'01' THEN CAST(substr(OLD.args, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
    );
    UPDATE payloads SET refs = refs - 1 WHERE id IN (
        SELECT CAST(substr(OLD.result, 2) AS INTEGER) WHERE substr(OLD.result, 1, 1) = x'00'
        UNION SELECT value FROM json_each(CASE WHEN substr(OLD.result, 1, 1) = x'01' THEN CAST(substr(OLD.result, 2) AS TEXT) ELSE '[]' END) WHERE type = 'integer'
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
