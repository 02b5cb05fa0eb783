-- Reads for the dashboard (executor/store/overview.py), PostgreSQL: failures grouped, runs
-- listed.

-- name: failure_groups
-- Failed and parked runs started since the given time (as RunFilter's --since counts), grouped
-- by workflow, the step that failed and the error's type. A run that failed because a step did
-- takes that step's error type (ValueError), not the wrapper's (StepFailed), so the groups say
-- what went wrong. Each group shows its latest run.
WITH failed AS (
    SELECT r.rid, r.id, r.workflow, r.status, r.updated_at,
           convert_from(r.error, 'UTF8')::jsonb AS error,
           (SELECT s.pos FROM steps AS s
            WHERE s.run_rid = r.rid AND s.status = 'failed' ORDER BY s.pos DESC LIMIT 1) AS pos
    FROM runs AS r
    WHERE r.status IN ('failed', 'parked') AND r.created_at >= %(since)s
), described AS (
    SELECT f.workflow, f.status, f.updated_at, f.id,
           coalesce(s.name, f.error ->> 'step') AS step,
           coalesce(convert_from(s.error, 'UTF8')::jsonb ->> 'type', f.error ->> 'type')
               AS error_type,
           coalesce(convert_from(s.error, 'UTF8')::jsonb ->> 'message', f.error ->> 'message')
               AS message
    FROM failed AS f
    LEFT JOIN steps AS s ON s.run_rid = f.rid AND s.pos = f.pos
), ranked AS (
    SELECT *,
           count(*) OVER g AS runs,
           min(updated_at) OVER g AS first_at,
           row_number() OVER (g ORDER BY updated_at DESC, id) AS latest
    FROM described
    WINDOW g AS (PARTITION BY workflow, status, step, error_type)
)
SELECT workflow, status, step, error_type, runs, first_at, updated_at, id, message
FROM ranked
WHERE latest = 1
ORDER BY runs DESC, workflow, step, error_type
LIMIT %(limit)s;

-- name: workflow_names
SELECT DISTINCT workflow FROM runs ORDER BY workflow;

-- name: batch_progress
-- A batch: the runs a RunFilter selects. Per status: runs and journal events recorded (steps
-- finished), for `executor watch`. (sum of bigint is numeric here: back to bigint.)
SELECT status, count(*), coalesce(sum(last_seq), 0)::bigint
FROM runs
WHERE /*include run_filter*/
GROUP BY status;
