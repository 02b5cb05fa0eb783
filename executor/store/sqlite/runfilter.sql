-- Runs by filter (executor/runfilter.py: RunFilter.params() binds the :f_* parameters). The clause
-- is written once, here, and included by name (/*include run_filter*/) in every statement below.
-- Error blobs are cast to text: JSON functions read BLOBs as JSONB from SQLite 3.45 on.

-- name: run_filter
(:f_workflow IS NULL OR workflow = :f_workflow)
AND (:f_statuses IS NULL OR status IN (SELECT value FROM json_each(:f_statuses)))
AND (:f_since IS NULL OR created_at >= :f_since)
AND (:f_until IS NULL OR created_at < :f_until)
AND (:f_finished_before IS NULL OR finished_at < :f_finished_before)
AND (:f_error IS NULL OR (error IS NOT NULL AND (
        instr(lower(json_extract(CAST(error AS TEXT), '$.type')), :f_error) > 0
     OR instr(lower(json_extract(CAST(error AS TEXT), '$.message')), :f_error) > 0)))
AND (:f_step IS NULL OR (error IS NOT NULL AND (
        json_extract(CAST(error AS TEXT), '$.step') = :f_step
     OR substr(json_extract(CAST(error AS TEXT), '$.step'), -length(:f_step_suffix))
        = :f_step_suffix)))
AND (:f_labels IS NULL OR (labels IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM json_each(:f_labels) AS want
        WHERE NOT EXISTS (SELECT 1 FROM json_each(runs.labels) AS have
                          WHERE have.key = want.key AND have.value = want.value))))

-- name: count_runs_filtered
SELECT count(*) FROM runs WHERE rid <= :upto AND (/*include run_filter*/);

-- name: page_runs_filtered
-- Newest first, keyset paging: the next page starts below the last rid shown.
SELECT rid, id, workflow, version, shard, status, result, error, created_at, updated_at,
       finished_at, last_seq, labels, generation, forked_from
FROM runs WHERE rid < :before AND (/*include run_filter*/)
ORDER BY rid DESC LIMIT :limit;

-- name: batch_runs_filtered
-- Oldest first, for actions: the next batch starts after the cursor, and never passes the cutoff.
SELECT rid FROM runs
WHERE rid > :after AND rid <= :upto AND (/*include run_filter*/)
ORDER BY rid LIMIT :limit;
