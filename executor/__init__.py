"""executor: durable async workflows on one machine; one SQLite file is all the infrastructure.

The names below are imported on first use (PEP 562), so `import executor` stays cheap: the
`executor` command installs its start-up signal handlers before the engine, the store and
asyncio are loaded (docs/RELIABILITY.md, "a stop during start-up").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from executor.client import Client as Client
    from executor.codec import register_codec as register_codec
    from executor.config import Config as Config
    from executor.config import DatabaseConfig as DatabaseConfig
    from executor.config import EngineConfig as EngineConfig
    from executor.engine.engine import Engine as Engine
    from executor.engine.engine import EngineCrashed as EngineCrashed
    from executor.engine.instance import WorkflowContext as WorkflowContext
    from executor.errors import ChildCancelled as ChildCancelled
    from executor.errors import ChildFailed as ChildFailed
    from executor.errors import ConfigError as ConfigError
    from executor.errors import ExecutorError as ExecutorError
    from executor.errors import NonDeterminismError as NonDeterminismError
    from executor.errors import PayloadError as PayloadError
    from executor.errors import RateLimited as RateLimited
    from executor.errors import ResultTimeout as ResultTimeout
    from executor.errors import RunCancelled as RunCancelled
    from executor.errors import RunNotFound as RunNotFound
    from executor.errors import RunParked as RunParked
    from executor.errors import StepFailed as StepFailed
    from executor.errors import StoreError as StoreError
    from executor.errors import WaitTimeout as WaitTimeout
    from executor.errors import WorkflowFailed as WorkflowFailed
    from executor.registry import Registry as Registry
    from executor.registry import RetryPolicy as RetryPolicy
    from executor.registry import step as step
    from executor.registry import workflow as workflow
    from executor.runinfo import RunStatus as RunStatus

# Public name -> the module that defines it.
_EXPORTS = {
    "Client": "executor.client",
    "RunStatus": "executor.runinfo",
    "register_codec": "executor.codec",
    "Config": "executor.config",
    "DatabaseConfig": "executor.config",
    "EngineConfig": "executor.config",
    "Engine": "executor.engine.engine",
    "EngineCrashed": "executor.engine.engine",
    "WorkflowContext": "executor.engine.instance",
    "ChildCancelled": "executor.errors",
    "ChildFailed": "executor.errors",
    "ConfigError": "executor.errors",
    "ExecutorError": "executor.errors",
    "NonDeterminismError": "executor.errors",
    "PayloadError": "executor.errors",
    "RateLimited": "executor.errors",
    "ResultTimeout": "executor.errors",
    "RunCancelled": "executor.errors",
    "RunNotFound": "executor.errors",
    "RunParked": "executor.errors",
    "StepFailed": "executor.errors",
    "StoreError": "executor.errors",
    "WaitTimeout": "executor.errors",
    "WorkflowFailed": "executor.errors",
    "Registry": "executor.registry",
    "RetryPolicy": "executor.registry",
    "step": "executor.registry",
    "workflow": "executor.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'executor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
