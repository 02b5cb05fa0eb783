"""The states and kinds written in SQL are the members of the vocabulary's enums.

A status spelled differently in one query ('canceled', 'Running') would make that query match
nothing, silently: every literal in the SQL files must be a member of the enum of the column it
is compared with or written to, or one of the few literals that are not vocabulary (meta keys,
the checker's labels).
"""

from __future__ import annotations

import enum
import re
from importlib import resources

import pytest

from executor import vocabulary

# Literals that are not states or kinds: keys of the meta table, labels of check.sql's rows, the
# separator of a group_concat, JSON paths into stored errors (overview.sql).
NOT_VOCABULARY = {
    "epoch",
    "shards",
    "queued task",
    "timer",
    "task",
    "replay entry",
    ",",
    "message",
    "wait on ",
    "|",
    "$.message",
    "$.step",
    "$.type",
    # The replay commit's batch rows, read from JSON arrays (commit_in_add, commit_in_steps_add).
    *(f"$[{i}]" for i in range(8)),
    # The payload store (migrations/0006_payloads.sql, payloads.sql): the format bytes of a
    # reference (x'00', x'01'), json_each's names, the trigger's error, check's column labels.
    "00",
    "01",
    "[]",
    "integer",
    "reference to a missing payload",
    "steps.args",
    "steps.result",
    "runs.args",
    "runs.result",
    # PostgreSQL's schema (postgres/migrations/0001_initial.sql): the trigger's TG_OP values,
    # the reference's format bytes as bytea escapes, its number check and encoding, the meta
    # row naming the application, the error the trigger raises.
    "DELETE",
    "INSERT",
    "UPDATE",
    "UTF8",
    "\\x00",
    "\\x01",
    "^-?[0-9]+$",
    "application",
    "foreign_key_violation",
    "number",
    # Opening a PostgreSQL database (postgres/database.sql): the catalog's relkind and deptype
    # codes, the setting and the table it probes, the meta key of the schema version.
    "S",
    "e",
    "f",
    "m",
    "p",
    "r",
    "v",
    "meta",
    "pg_class",
    "schema_version",
    "transaction_read_only",
    # PostgreSQL's statements (store/postgres/*.sql): the keys of a stored error read as jsonb
    # (SQLite's '$.type' paths), the server's page size.
    "type",
    "block_size",
}

_STRING = re.compile(r"'((?:[^']|'')*)'")
_COMMENT = re.compile(r"--[^\n]*")
# `status = 'x'`, `r.status != 'x'`, `state IN ('x', 'y')`, `status NOT IN (...)`
_COMPARED = re.compile(
    r"\b(?:\w+\.)?(status|state|kind)\s*(?:=|!=|<>|\bNOT\s+IN\b|\bIN\b)\s*(\([^)]*\)|'[^']*')",
    re.IGNORECASE,
)
# The schema's own documentation of a column: `status TEXT NOT NULL, -- running | parked | ...`
_DOCUMENTED = re.compile(r"^\s*(status|state|kind)\s+TEXT\b[^\n]*--\s*([\w |]+)$", re.MULTILINE)


def _tables() -> dict[str, type[enum.StrEnum]]:
    """Column -> the enum its values come from."""
    return {
        "runs.status": vocabulary.RunState,
        "steps.status": vocabulary.StepState,
        "steps.kind": vocabulary.StepKind,
        "engines.state": vocabulary.EngineState,
        "tasks.parked": vocabulary.TaskHold,
        "run_actions.action": vocabulary.ActionKind,
        "run_actions.phase": vocabulary.ActionPhase,
    }


def _sql_files() -> dict[str, str]:
    # Both dialects: a PostgreSQL statement spells the same states as its SQLite twin.
    files: dict[str, str] = {}
    for dialect in ("sqlite", "postgres"):
        folder = resources.files("executor.store").joinpath(dialect)
        migrations = folder.joinpath("migrations")
        for sub, where in ((folder, dialect), (migrations, f"{dialect}/migrations")):
            for e in sub.iterdir():
                if e.name.endswith(".sql"):
                    files[f"{where}/{e.name}"] = e.read_text()
    return files


SQL = _sql_files()
ALL_MEMBERS = {m.value for enum_ in _tables().values() for m in enum_}


def test_there_are_sql_files() -> None:
    expected = {"queries.sql", "check.sql", "limits.sql", "migrations/0001_initial.sql"}
    assert {f"sqlite/{name}" for name in expected} <= set(SQL)


@pytest.mark.parametrize("name", sorted(SQL))
def test_every_literal_is_a_member_or_known(name: str) -> None:
    code = _COMMENT.sub("", SQL[name])
    unknown = {
        lit for lit in _STRING.findall(code) if lit not in ALL_MEMBERS and lit not in NOT_VOCABULARY
    }
    assert not unknown, f"{name}: literals that are not in executor.vocabulary: {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(SQL))
def test_compared_literals_belong_to_their_column(name: str) -> None:
    code = _COMMENT.sub("", SQL[name])
    # status is runs.status or steps.status: both enums are allowed there, never another one.
    allowed = {
        "status": {m.value for m in (*vocabulary.RunState, *vocabulary.StepState)},
        "state": {m.value for m in vocabulary.EngineState},
        "kind": {m.value for m in vocabulary.StepKind},
    }
    bad = [
        f"{column} {values}"
        for column, values in _COMPARED.findall(code)
        for lit in _STRING.findall(values)
        if lit not in allowed[column.lower()]
    ]
    assert not bad, f"{name}: {bad}"


def test_schema_comments_list_exactly_the_members() -> None:
    documented = {}
    for column, values in _DOCUMENTED.findall(SQL["sqlite/migrations/0001_initial.sql"]):
        documented.setdefault(column, []).append({v.strip() for v in values.split("|")})
    tables = _tables()
    assert documented["status"] == [
        {m.value for m in tables["runs.status"]},
        {m.value for m in tables["steps.status"]},
    ]
    # Kinds added later (0004_signals.sql: wait, event; 0007_children.sql: child, start; patch
    # markers need no migration); 0001 stays as written.
    later = {"wait", "event", "child", "start", "patch"}
    assert documented["kind"] == [{m.value for m in tables["steps.kind"]} - later]
    # An engine object is NEW before it has a row.
    assert documented["state"] == [{m.value for m in tables["engines.state"]} - {"new"}]


def test_the_checker_catches_a_misspelt_literal() -> None:
    code = "UPDATE runs SET status = 'canceled' WHERE status IN ('running', 'parked');"
    assert _COMPARED.findall(code) == [
        ("status", "'canceled'"),
        ("status", "('running', 'parked')"),
    ]
    assert "canceled" not in ALL_MEMBERS


def test_finished_and_live_sets() -> None:
    assert {"succeeded", "failed", "cancelled"} == vocabulary.FINISHED
    assert {"running", "draining"} == vocabulary.LIVE_ENGINE_STATES
    # A member is the stored string itself: rows read back compare equal without conversion.
    assert vocabulary.RunState("parked") is vocabulary.RunState.PARKED
    assert vocabulary.RunState.PARKED == "parked"
