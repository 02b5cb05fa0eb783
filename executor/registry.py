"""@workflow and @step: the user's functions, registered by name.

A daemon finds a step by the name stored in its task row, so names must be stable across
deploys; the default is the function's module and qualified name.
"""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import random
import typing
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from executor import decoders, errors

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed step attempt is retried: exponential backoff with jitter."""

    max_attempts: int = 3
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +/- this fraction of the delay, so retries of a burst spread out
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise errors.RegistryError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise errors.RegistryError("RetryPolicy: backoffs must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise errors.RegistryError("RetryPolicy.jitter must be between 0 and 1")

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before attempt `attempt + 1`, after attempt `attempt` (1-based) failed."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))

    def retryable(self, exc_type: str, exc: BaseException | None) -> bool:
        if exc is not None:
            return not isinstance(exc, self.non_retryable)
        return all(t.__name__ != exc_type for t in self.non_retryable)


DEFAULT_RETRY = RetryPolicy()


class Types:
    """The declared types of a step's or workflow's parameters and result, as decoders from the
    stored JSON form (decoders.py). Checked when the function is defined: a type that cannot be
    stored is refused there, before any call. An annotation naming a class defined later in its
    module is resolved at first use (or by Registry.check_types at daemon start)."""

    __slots__ = ("_fn", "_params", "_plain_args", "_rest", "_result", "_skip", "_what", "resolved")

    def __init__(self, fn: Callable[..., Any], what: str, skip: int) -> None:
        self._fn = fn
        self._what = what
        self._skip = skip  # leading parameters that are not stored (a workflow's ctx)
        self._params: tuple[decoders.Decoder | None, ...] = ()
        self._rest: decoders.Decoder | None = None
        self._result: decoders.Decoder | None = None
        self._plain_args = True  # no argument needs a decoder (set by _resolve)
        self.resolved = False
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except NameError:
            return  # a forward reference: resolved at first use
        except Exception as exc:
            raise errors.RegistryError(f"{what}: cannot read its annotations: {exc}") from exc
        self._resolve(hints)

    def _resolve(self, hints: dict[str, Any]) -> None:
        params = list(inspect.signature(self._fn).parameters.values())[self._skip :]
        decs = []
        for p in params:
            where = f"{self._what}, parameter {p.name}"
            dec = decoders.decoder(hints[p.name], where) if p.name in hints else None
            if p.kind is p.VAR_POSITIONAL:
                self._rest = dec
            elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                decs.append(dec)
        self._params = tuple(decs)
        self._plain_args = self._rest is None and not any(decs)
        if "return" in hints:
            ret = hints["return"]
            if typing.get_origin(ret) in (collections.abc.Awaitable, collections.abc.Coroutine):
                ret = typing.get_args(ret)[-1]
            self._result = decoders.decoder(ret, f"{self._what}, return type")
        self.resolved = True

    def resolve(self) -> None:
        """Resolve annotations that named classes not yet defined at decoration time."""
        if self.resolved:
            return
        try:
            hints = typing.get_type_hints(self._fn, include_extras=True)
        except Exception as exc:
            raise errors.RegistryError(
                f"{self._what}: cannot resolve its annotations: {exc}"
            ) from exc
        self._resolve(hints)

    @property
    def result(self) -> decoders.Decoder | None:
        if not self.resolved:
            self.resolve()
        return self._result

    def decode_args(self, values: list[Any], where: str) -> list[Any]:
        """Stored arguments (their JSON form) as the types the parameters declare."""
        if not self.resolved:
            self.resolve()
        if self._plain_args:
            return values
        out = list(values)
        for i, value in enumerate(out):
            dec = self._params[i] if i < len(self._params) else self._rest
            if dec is not None:
                out[i] = decoders.convert(dec, value, f"{where}[{i}]")
        return out

    def decode_result(self, value: Any, where: str) -> Any:
        dec = self.result
        return value if dec is None else decoders.convert(dec, value, where)


class _StepScheduler(Protocol):
    def step(self, fn: StepDef[Any, Any], *args: Any) -> Awaitable[Any]: ...


# The workflow context of the workflow code running now (set by the engine around each
# activation), so that `await my_step(x)` inside a workflow schedules a durable step.
current_context: ContextVar[_StepScheduler | None] = ContextVar("executor_context", default=None)


@dataclass(frozen=True, slots=True, eq=False)
class StepDef(Generic[P, R]):
    fn: Callable[P, Any]
    name: str
    retry: RetryPolicy
    timeout_s: float | None
    is_async: bool
    limits: tuple[str, ...] = ()  # names of [limits.NAME] quotas this step draws on
    cost: Callable[..., float] | None = None  # tokens one call uses, from the step's arguments
    types: Types | None = None  # declared types of the arguments and result
    optional_limits: tuple[str, ...] = ()  # those of `limits` that may be left unconfigured

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        # Inside a workflow this schedules the durable step; outside one it just calls the
        # function, so steps stay testable as plain code.
        ctx = current_context.get()
        if ctx is not None:
            if kwargs:
                raise errors.WorkflowUsageError(
                    f"step {self.name}: pass arguments positionally (they are stored as a list)"
                )
            return ctx.step(self, *args)
        if self.is_async:
            return self.fn(*args, **kwargs)  # type: ignore[no-any-return]
        return asyncio.to_thread(self.fn, *args, **kwargs)


@dataclass(frozen=True, slots=True, eq=False)
class WorkflowDef(Generic[R]):
    fn: Callable[..., Awaitable[R]]
    name: str
    version: str | None
    arity: tuple[int, int | None]  # min and max positional arguments after ctx
    types: Types | None = None  # declared types of the arguments (after ctx) and result

    def check_args(self, args: tuple[Any, ...] | list[Any]) -> None:
        low, high = self.arity
        if len(args) < low or (high is not None and len(args) > high):
            want = f"{low}" if low == high else f"{low} to {high if high is not None else 'any'}"
            raise errors.RegistryError(
                f"workflow {self.name} takes {want} arguments after ctx, got {len(args)}"
            )


@dataclass
class Registry:
    workflows: dict[str, WorkflowDef[Any]] = field(default_factory=dict)
    steps: dict[str, StepDef[Any, Any]] = field(default_factory=dict)

    def add_workflow(self, wf: WorkflowDef[Any]) -> None:
        old = self.workflows.get(wf.name)
        if old is not None and old.fn is not wf.fn and _origin(old.fn) != _origin(wf.fn):
            raise errors.RegistryError(f"workflow name {wf.name!r} is registered twice")
        self.workflows[wf.name] = wf

    def add_step(self, st: StepDef[Any, Any]) -> None:
        old = self.steps.get(st.name)
        if old is not None and old.fn is not st.fn and _origin(old.fn) != _origin(st.fn):
            raise errors.RegistryError(f"step name {st.name!r} is registered twice")
        self.steps[st.name] = st

    def workflow(self, name: str) -> WorkflowDef[Any]:
        try:
            return self.workflows[name]
        except KeyError:
            raise errors.RegistryError(
                f"unknown workflow {name!r}; known: {sorted(self.workflows) or 'none'}"
                " (is its module listed in daemon.workflows?)"
            ) from None

    def check_types(self) -> None:
        """Resolve every annotation left for later (forward references): an unstorable type is
        refused here, at daemon start, rather than at the first call."""
        defs: list[WorkflowDef[Any] | StepDef[Any, Any]] = [*self.workflows.values()]
        defs.extend(self.steps.values())
        for item in defs:
            if item.types is not None:
                item.types.resolve()

    def step(self, name: str) -> StepDef[Any, Any]:
        try:
            return self.steps[name]
        except KeyError:
            raise errors.RegistryError(f"unknown step {name!r}") from None


def _origin(fn: Callable[..., Any]) -> tuple[str, str]:
    # Re-importing a module (tests, reloads) re-registers the same function: not a clash.
    return (getattr(fn, "__module__", ""), getattr(fn, "__qualname__", ""))


default_registry = Registry()


def _default_name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _arity(fn: Callable[..., Any]) -> tuple[int, int | None]:
    params = list(inspect.signature(fn).parameters.values())[1:]  # after ctx
    low = 0
    high: int | None = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            high = None
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if high is not None:
                high += 1
            if p.default is p.empty:
                low += 1
    return low, high


@overload
def workflow(fn: Callable[..., Awaitable[R]], /) -> WorkflowDef[R]: ...
@overload
def workflow(
    *, name: str | None = None, version: str | None = None, registry: Registry | None = None
) -> Callable[[Callable[..., Awaitable[R]]], WorkflowDef[R]]: ...


def workflow(
    fn: Callable[..., Awaitable[R]] | None = None,
    /,
    *,
    name: str | None = None,
    version: str | None = None,
    registry: Registry | None = None,
) -> WorkflowDef[R] | Callable[[Callable[..., Awaitable[R]]], WorkflowDef[R]]:
    """Register `async def f(ctx, *args)` as a workflow (usable bare or with arguments)."""

    def wrap(f: Callable[..., Awaitable[R]]) -> WorkflowDef[R]:
        if not inspect.iscoroutinefunction(f):
            raise errors.RegistryError(f"workflow {_default_name(f)} must be an async def")
        wf_name = name or _default_name(f)
        types = Types(f, f"workflow {wf_name}", skip=1)
        wf = WorkflowDef(f, wf_name, version, _arity(f), types)
        (registry or default_registry).add_workflow(wf)
        return wf

    return wrap(fn) if fn is not None else wrap


@overload
def step(fn: Callable[P, Awaitable[R]], /) -> StepDef[P, R]: ...
@overload
def step(fn: Callable[P, R], /) -> StepDef[P, R]: ...
@overload
def step(
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    registry: Registry | None = None,
    limits: Sequence[str] = (),
    cost: Callable[..., float] | None = None,
    optional_limits: Sequence[str] = (),
) -> Callable[[Callable[P, Any]], StepDef[P, Any]]: ...


def step(
    fn: Callable[P, Any] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    registry: Registry | None = None,
    limits: Sequence[str] = (),
    cost: Callable[..., float] | None = None,
    optional_limits: Sequence[str] = (),
) -> StepDef[P, Any] | Callable[[Callable[P, Any]], StepDef[P, Any]]:
    """Register a step: an async def, or a plain function (which then runs in a thread).

    `timeout` is per attempt, in seconds; an attempt over it is cancelled and counts as failed.
    `limits` names the [limits.NAME] quotas each call draws on (docs/LIMITS.md); `cost`, called
    with the step's arguments, estimates the tokens a call uses from those quotas. A limit in
    `limits` that is not configured is refused when the engine starts; `optional_limits` are drawn
    on when configured and skipped otherwise.
    """
    if timeout is not None and timeout <= 0:
        raise errors.RegistryError("step timeout must be > 0 seconds")
    for names in (limits, optional_limits):
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise errors.RegistryError(f"step limits must be a list of limit names, got {names!r}")
    if cost is not None and not callable(cost):
        raise errors.RegistryError(f"step cost must be a function of the arguments, got {cost!r}")
    if cost is not None and not limits and not optional_limits:
        raise errors.RegistryError("step cost is drawn from limits: name them with limits=[...]")

    def wrap(f: Callable[P, Any]) -> StepDef[P, Any]:
        st_name = name or _default_name(f)
        st: StepDef[P, Any] = StepDef(
            f,
            st_name,
            retry or DEFAULT_RETRY,
            timeout,
            inspect.iscoroutinefunction(f),
            tuple(dict.fromkeys([*limits, *optional_limits])),
            cost,
            Types(f, f"step {st_name}", skip=0),
            tuple(dict.fromkeys(optional_limits)),
        )
        (registry or default_registry).add_step(st)
        return st

    return wrap(fn) if fn is not None else wrap
