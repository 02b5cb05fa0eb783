-- The reference counts on updates (0001_initial.sql, payload_refcount): only the columns whose
-- value changed move. Recording a step's result used to take the references of its arguments away
-- and back (two new versions of each argument's payload row) although the arguments were not
-- touched (docs/PERFORMANCE.md, issue 15, third round). SQLite: migrations/0011.
CREATE OR REPLACE FUNCTION payload_refcount() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        PERFORM payload_refs_move(
            CASE WHEN OLD.args IS DISTINCT FROM NEW.args THEN OLD.args END,
            CASE WHEN OLD.result IS DISTINCT FROM NEW.result THEN OLD.result END,
            -1);
        PERFORM payload_refs_move(
            CASE WHEN OLD.args IS DISTINCT FROM NEW.args THEN NEW.args END,
            CASE WHEN OLD.result IS DISTINCT FROM NEW.result THEN NEW.result END,
            1);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM payload_refs_move(OLD.args, OLD.result, -1);
    ELSE
        PERFORM payload_refs_move(NEW.args, NEW.result, 1);
    END IF;
    RETURN NULL;
END
$$;
