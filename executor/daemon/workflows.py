"""Importing the modules named in daemon.workflows, which register workflows and steps."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from executor import errors, registry


class WorkflowImportError(errors.ConfigError):
    """A module named in daemon.workflows could not be imported."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details  # the import's traceback, for the operator to fix their code


def import_workflows(modules: Sequence[str], source: str = "daemon.workflows") -> None:
    """Import each module in order; raise WorkflowImportError naming the first that fails."""
    if not modules:
        return
    # Like `python -m`: modules next to where the daemon was started are importable, which the
    # `executor` console script (unlike `python -m executor`) does not arrange by itself.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # SystemExit from a module body too
            if isinstance(exc, KeyboardInterrupt):
                raise
            # A module that is not there needs no traceback; one that failed in its body does.
            missing = (
                isinstance(exc, ModuleNotFoundError)
                and exc.name is not None
                and (name == exc.name or name.startswith(exc.name + "."))
            )
            raise WorkflowImportError(
                f"{source}: cannot import workflow module {name!r}: {type(exc).__name__}: {exc}",
                "" if missing else "".join(traceback.format_exception(exc)),
            ) from exc
    # Annotations naming classes defined later in their module are resolved now: a type that
    # cannot be stored stops the daemon here, not at a step's first call.
    try:
        registry.default_registry.check_types()
    except errors.RegistryError as exc:
        raise WorkflowImportError(f"{source}: {exc}", "") from exc
