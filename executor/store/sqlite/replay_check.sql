-- `executor replay-check` (executor/replaycheck.py): the runs to rebuild against new code.

-- name: replay_check_runs
-- Runs of the given statuses (a JSON array), optionally of the given workflows (a JSON array,
-- NULL: all), oldest first, after a rid (batches).
SELECT rid FROM runs
WHERE status IN (SELECT value FROM json_each(:statuses))
  AND (:workflows IS NULL OR workflow IN (SELECT value FROM json_each(:workflows)))
  AND rid > :after
ORDER BY rid
LIMIT :limit;
