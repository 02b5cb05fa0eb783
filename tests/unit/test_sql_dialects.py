"""The two SQL dialects define the same named statements, in their own placeholder styles.

A store function reads `conn.q["name"]` and runs unchanged on SQLite and on PostgreSQL, so every
name must exist in both (executor/store/sqlite/*.sql and executor/store/postgres/*.sql), except
the few in DIALECT_ONLY. While the PostgreSQL files are being written, NOT_YET_PORTED lists the
SQLite names with no PostgreSQL statement yet: porters delete names from it as they port them (the
test fails while a ported name is still listed, so the set only shrinks); it must be empty, or
each name left justified, when the port is done.
"""

from __future__ import annotations

import re

from executor.store import sql

SQLITE = sql.queries("sqlite")
POSTGRES = sql.queries("postgres")

# Names only one dialect has (name -> that dialect), with why. Exempt from the parity check.
DIALECT_ONLY: dict[str, str] = {
    # SQLite's page-level housekeeping (actions.vacuum_step): PostgreSQL's autovacuum gives space
    # back on its own, and vacuum_step returns 0 there without reading these.
    "incremental_vacuum": "sqlite",
    "auto_vacuum_mode": "sqlite",
    "freelist_count": "sqlite",
    # Payload inserts: SQLite's without RETURNING (its temporary table per run costs more than
    # the insert; the id is the cursor's lastrowid), PostgreSQL's with (store/payloads.py).
    "insert_payload_new": "sqlite",
    "payload_by_digest_file": "sqlite",
    "insert_payload_row": "sqlite",
    "insert_payload": "postgres",
    "insert_payload_unshared": "postgres",
    # A batch of runs in one statement over a JSON array (repository.create_runs): SQLite's
    # executemany costs three times its CPU and takes the GIL back after every row while it
    # holds the write lock. PostgreSQL keeps executemany (psycopg pipelines it).
    "insert_runs_json": "sqlite",
    # The hot transactions: SQLite claims and records with a few statements over the batch (a
    # temporary table for the record); PostgreSQL runs each as one statement over arrays
    # (store/pghot.py, postgres/hot.sql).
    "mark_claimed": "sqlite",
    "count_claimed_attempts": "sqlite",
    "count_claimed_attempts_new": "sqlite",
    "select_claimed": "sqlite",
    # A run's next task claimed in the replay commit that queues it: PostgreSQL does it inside
    # commit_batch (its per-row path, for rarer outputs, queues them as before).
    "claim_next_task": "sqlite",
    # What a replay commit's runs claimed of each shard, for the head claims (mark_claimed) of
    # the slots they leave unused: PostgreSQL runs claim_batch after commit_batch (repository.py).
    "claimed_by_shard": "sqlite",
    # SQLite's replay commit of plain outputs, set-based over temporary tables
    # (store/commitbatch.py); PostgreSQL's is commit_batch.
    **{
        f"commit_in_{part}": "sqlite"
        for part in [
            "create",
            "steps_create",
            "add",
            "steps_add",
            "live",
            "family",
            "stale",
            "steps_new",
            "steps_insert",
            "queue",
            "claim",
            "queue_rest",
            "finish",
            "finished_tasks",
            "finished_timers",
            "finished_waits",
            "replays",
            "steps_clear",
            "clear",
        ]
    },
    **{
        f"record_in_{part}": "sqlite"
        for part in [
            "create",
            "clear",
            "add",
            "add_plain",
            "fence",
            "number",
            "delete_tasks",
            "steps",
            "runs",
            "replays",
            "recorded",
        ]
    },
    "claim_batch": "postgres",
    "record_batch": "postgres",
    "commit_batch": "postgres",
    # Opening a PostgreSQL database (store/pgdatabase.py): SQLite has PRAGMA application_id,
    # user_version and BEGIN IMMEDIATE where PostgreSQL needs a meta row, a catalog probe and an
    # advisory lock.
    "session_read_only": "postgres",
    "schema_probe": "postgres",
    "select_schema_meta": "postgres",
    "migration_lock": "postgres",
    "set_schema_version": "postgres",
    # `executor vacuum` on SQLite also switches the file to incremental auto-vacuum; PostgreSQL
    # has no such mode (actions.vacuum_file runs VACUUM FULL there).
    "set_auto_vacuum_incremental": "sqlite",
    # `executor check` reads SQLite's PRAGMAs: the application id and version, and quick_check
    # of the file's pages. On PostgreSQL the reader checks meta as it opens the session
    # (store/reader.py), and the server checks its own pages (checksums, amcheck).
    "check_header": "sqlite",
    # Two identical actions by filter begun at once take turns (SQLite's write lock does that).
    "lock_action": "postgres",
    "check_integrity": "sqlite",
}

# Every SQLite name that has no PostgreSQL statement yet. Delete a name's line when you port it.
NOT_YET_PORTED: frozenset[str] = frozenset()

# SQLite's placeholders, `?` and `:name`, outside string literals and comments (`::` is a cast).
_LITERAL = re.compile(r"'(?:[^']|'')*'")
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_SQLITE_PLACEHOLDER = re.compile(r"\?|(?<![:\w]):[A-Za-z_]\w*")


def _sqlite_placeholders(statement: str) -> list[str]:
    return _SQLITE_PLACEHOLDER.findall(_COMMENT.sub(" ", _LITERAL.sub("''", statement)))


def test_dialect_only_names_exist_in_their_dialect_only() -> None:
    for name, dialect in DIALECT_ONLY.items():
        assert dialect in sql.DIALECTS, f"{name}: unknown dialect {dialect}"
        own, other = (SQLITE, POSTGRES) if dialect == "sqlite" else (POSTGRES, SQLITE)
        assert name in own, f"DIALECT_ONLY: {dialect} has no statement {name}"
        assert name not in other, f"DIALECT_ONLY: {name} is defined in both dialects"


def test_postgres_defines_no_name_sqlite_lacks() -> None:
    postgres_only = {n for n, d in DIALECT_ONLY.items() if d == "postgres"}
    extra = set(POSTGRES) - set(SQLITE) - postgres_only
    assert not extra, f"PostgreSQL statements with no SQLite twin: {sorted(extra)}"


def test_every_sqlite_name_is_ported_or_listed() -> None:
    sqlite_only = {n for n, d in DIALECT_ONLY.items() if d == "sqlite"}
    missing = set(SQLITE) - set(POSTGRES) - sqlite_only - NOT_YET_PORTED
    assert not missing, f"no PostgreSQL statement and not in NOT_YET_PORTED: {sorted(missing)}"


def test_not_yet_ported_only_shrinks() -> None:
    ported = NOT_YET_PORTED & set(POSTGRES)
    assert not ported, f"ported now: delete from NOT_YET_PORTED: {sorted(ported)}"
    unknown = NOT_YET_PORTED - set(SQLITE)
    assert not unknown, f"NOT_YET_PORTED names no SQLite statement: {sorted(unknown)}"
    assert not NOT_YET_PORTED & set(DIALECT_ONLY), "a name is in DIALECT_ONLY and NOT_YET_PORTED"


def test_postgres_statements_use_psycopg_placeholders() -> None:
    wrong = {n: found for n, q in POSTGRES.items() if (found := _sqlite_placeholders(q))}
    assert not wrong, f"SQLite placeholders in PostgreSQL statements (use %s, %(name)s): {wrong}"


def test_placeholder_check_tells_the_styles_apart() -> None:
    assert _sqlite_placeholders("SELECT a FROM t WHERE b = ? AND c = :c") == ["?", ":c"]
    psycopg = "SELECT a::bigint, '?:x' FROM t /* :z */ WHERE b = %s AND c = %(c)s -- ? :y"
    assert _sqlite_placeholders(psycopg) == []


def test_migrations_of_each_dialect_are_numbered_from_one() -> None:
    for dialect in sql.DIALECTS:
        versions = [v for v, _, _ in sql.migrations(dialect)]
        assert versions == list(range(1, len(versions) + 1)), dialect
    assert sql.migrations("sqlite"), "SQLite has its migrations"


def test_begin_write_opens_the_write_transaction() -> None:
    assert SQLITE["begin_write"].splitlines()[-1] == "BEGIN IMMEDIATE;"


def test_postgres_percent_signs_are_placeholders_or_escaped() -> None:
    # psycopg reads every `%` of a statement it is given parameters for, comments included (the
    # store always passes parameters): a stray one fails at run time, far from the file.
    stray = re.compile(r"%(?!s|\(\w+\)s|%)")
    wrong = {n: q.count("%") for n, q in POSTGRES.items() if stray.search(q.replace("%%", ""))}
    assert not wrong, f"a bare % in PostgreSQL statements (write %% for a literal %): {wrong}"
