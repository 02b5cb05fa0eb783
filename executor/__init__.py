"""executor: durable async workflows on one machine; one SQLite file is all the infrastructure."""

from __future__ import annotations

from executor.client import Client, RunStatus
from executor.codec import register_codec
from executor.config import Config, DatabaseConfig, EngineConfig
from executor.engine.engine import Engine, EngineCrashed
from executor.engine.instance import WorkflowContext
from executor.errors import (
    ChildCancelled,
    ChildFailed,
    ConfigError,
    ExecutorError,
    NonDeterminismError,
    PayloadError,
    RateLimited,
    ResultTimeout,
    RunCancelled,
    RunNotFound,
    RunParked,
    StepFailed,
    StoreError,
    WaitTimeout,
    WorkflowFailed,
)
from executor.registry import Registry, RetryPolicy, step, workflow

__all__ = [
    "ChildCancelled",
    "ChildFailed",
    "Client",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "Engine",
    "EngineConfig",
    "EngineCrashed",
    "ExecutorError",
    "NonDeterminismError",
    "PayloadError",
    "RateLimited",
    "Registry",
    "ResultTimeout",
    "RetryPolicy",
    "RunCancelled",
    "RunNotFound",
    "RunParked",
    "RunStatus",
    "StepFailed",
    "StoreError",
    "WaitTimeout",
    "WorkflowContext",
    "WorkflowFailed",
    "register_codec",
    "step",
    "workflow",
]
