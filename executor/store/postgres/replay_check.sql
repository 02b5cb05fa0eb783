-- `executor replay-check` (executor/replaycheck.py), PostgreSQL: the runs to rebuild against new
-- code.

-- name: replay_check_runs
-- Runs of the given statuses (a JSON array), optionally of the given workflows (a JSON array,
-- NULL: all), oldest first, after a rid (batches).
SELECT rid FROM runs
WHERE status IN (SELECT jsonb_array_elements_text(%(statuses)s::jsonb))
  AND (%(workflows)s::jsonb IS NULL
       OR workflow IN (SELECT jsonb_array_elements_text(%(workflows)s::jsonb)))
  AND rid > %(after)s
ORDER BY rid
LIMIT %(limit)s;
