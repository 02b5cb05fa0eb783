-- The reference-count triggers on updates (0006_payloads.sql), one per column and only when the
-- column's value changes: recording a step's result used to take the references of its arguments
-- away and back (two rewrites of each argument's payload row, its page written again) although
-- the arguments were not touched (docs/PERFORMANCE.md, issue 15, third round).
DROP TRIGGER steps_payloads_update;

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
DROP TRIGGER runs_payloads_update;

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
