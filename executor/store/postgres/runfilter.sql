-- Runs by filter (executor/runfilter.py: RunFilter.params() binds the f_* parameters),
-- PostgreSQL. The clause is written once, here, and included by name (/*include run_filter*/)
-- in every statement below. Errors are JSON in bytea: read as jsonb. Each parameter is cast
-- where it first appears, since a bare NULL parameter has no type PostgreSQL can infer.

-- name: run_filter
(%(f_workflow)s::text IS NULL OR workflow = %(f_workflow)s)
AND (%(f_statuses)s::jsonb IS NULL
     OR status IN (SELECT jsonb_array_elements_text(%(f_statuses)s::jsonb)))
AND (%(f_since)s::double precision IS NULL OR created_at >= %(f_since)s)
AND (%(f_until)s::double precision IS NULL OR created_at < %(f_until)s)
AND (%(f_finished_before)s::double precision IS NULL OR finished_at < %(f_finished_before)s)
AND (%(f_error)s::text IS NULL OR (error IS NOT NULL AND (
        strpos(lower(convert_from(error, 'UTF8')::jsonb ->> 'type'), %(f_error)s) > 0
     OR strpos(lower(convert_from(error, 'UTF8')::jsonb ->> 'message'), %(f_error)s) > 0)))
AND (%(f_step)s::text IS NULL OR (error IS NOT NULL AND (
        convert_from(error, 'UTF8')::jsonb ->> 'step' = %(f_step)s
     OR right(convert_from(error, 'UTF8')::jsonb ->> 'step', length(%(f_step_suffix)s::text))
        = %(f_step_suffix)s)))
-- Labels are a flat JSON object of strings: containment is "has every label asked for".
AND (%(f_labels)s::jsonb IS NULL OR (labels IS NOT NULL AND labels::jsonb @> %(f_labels)s::jsonb))

-- name: count_runs_filtered
SELECT count(*) FROM runs WHERE rid <= %(upto)s AND (/*include run_filter*/);

-- name: page_runs_filtered
-- Newest first, keyset paging: the next page starts below the last rid shown.
SELECT rid, id, workflow, version, shard, status, result, error, created_at, updated_at,
       finished_at, last_seq, labels, generation, forked_from
FROM runs WHERE rid < %(before)s AND (/*include run_filter*/)
ORDER BY rid DESC LIMIT %(limit)s;

-- name: batch_runs_filtered
-- Oldest first, for actions: the next batch starts after the cursor, and never passes the cutoff.
SELECT rid FROM runs
WHERE rid > %(after)s AND rid <= %(upto)s AND (/*include run_filter*/)
ORDER BY rid LIMIT %(limit)s;
