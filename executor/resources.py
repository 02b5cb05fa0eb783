"""Long-lived clients shared by steps: one per factory and parameters, per process.

A step that calls an API should not build a client (and pay a TLS handshake) per call:

    async with resources.use(make_client, api_key=key, base_url=url) as client:
        ...

The first use creates the client with `make_client(api_key=key, base_url=url)` (a plain or an
async function); later uses with the same factory and parameters get the same client, so its
connection pool is reused. Different parameters (another API key) never share a client.

The registry is bounded: past `max_clients`, the least recently used idle client is closed, and a
client idle for `idle_ttl_s` is closed too. A client in use is never closed under a step: it is
reference counted, and an evicted client is closed when its last user is done. When the engine
drains it closes every client, newest first (dependencies are usually created first).

Closing uses `closer(client)` when one was given to `use`, else the client's `aclose()`, else its
`close()` (awaited if it returns an awaitable).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from typing import Any, TypeVar, cast, overload

from executor import errors

log = logging.getLogger("executor.resources")

T = TypeVar("T")

DEFAULT_MAX_CLIENTS = 256
DEFAULT_IDLE_TTL_S = 300.0

Closer = Callable[[Any], object]
_Key = tuple[Callable[..., Any], tuple[tuple[str, Hashable], ...]]


# Stands in for "no creation to wait for" when _lookup finds a live entry.
_DONE: concurrent.futures.Future[Any] = concurrent.futures.Future()


class _Entry:
    __slots__ = ("client", "closer", "evicted", "key", "last_used", "refs", "seq")

    def __init__(self, key: _Key, client: Any, closer: Closer | None, seq: int) -> None:
        self.key = key
        self.client = client
        self.closer = closer
        self.refs = 0
        self.last_used = time.monotonic()
        self.evicted = False
        self.seq = seq


def _freeze(value: object) -> Hashable:
    # Parameters are the cache key: lists and dicts are frozen so they can be part of it.
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        items = [_freeze(v) for v in value]
        return tuple(sorted(items, key=repr) if isinstance(value, set | frozenset) else items)
    try:
        hash(value)
    except TypeError:
        raise errors.ExecutorError(
            f"resources.use: parameter value {value!r} is not hashable, so it cannot identify a"
            " client"
        ) from None
    return value


def _name(factory: Callable[..., Any]) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', factory)}"


class Resources:
    """A registry of shared clients (see the module docstring). Thread-safe."""

    def __init__(
        self, max_clients: int = DEFAULT_MAX_CLIENTS, idle_ttl_s: float = DEFAULT_IDLE_TTL_S
    ) -> None:
        if max_clients < 1 or idle_ttl_s <= 0:
            raise errors.ExecutorError("Resources: max_clients must be >= 1 and idle_ttl_s > 0")
        self.max_clients = max_clients
        self.idle_ttl_s = idle_ttl_s
        self._lock = threading.Lock()
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()  # least recently used first
        self._creating: dict[_Key, concurrent.futures.Future[_Entry]] = {}
        self._doomed: list[_Entry] = []  # evicted or expired while in use: closed when released
        self._seq = itertools.count()
        self.created = 0
        self.closed = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # -- using a client --

    @overload
    def use(
        self,
        factory: Callable[..., Awaitable[T]],
        /,
        *,
        closer: Closer | None = None,
        **params: Any,
    ) -> contextlib.AbstractAsyncContextManager[T]: ...
    @overload
    def use(
        self, factory: Callable[..., T], /, *, closer: Closer | None = None, **params: Any
    ) -> contextlib.AbstractAsyncContextManager[T]: ...

    def use(
        self, factory: Callable[..., Any], /, *, closer: Closer | None = None, **params: Any
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """The shared client for `factory(**params)` (plain or async), created on first use."""
        return self._use(factory, closer, params)

    @contextlib.asynccontextmanager
    async def _use(
        self, factory: Callable[..., Any], closer: Closer | None, params: dict[str, Any]
    ) -> AsyncIterator[Any]:
        entry = await self._acquire_async(factory, closer, params)
        try:
            yield entry.client
        finally:
            await self._close_all(self._release(entry))

    @contextlib.contextmanager
    def use_sync(
        self, factory: Callable[..., T], /, *, closer: Closer | None = None, **params: Any
    ) -> Iterator[T]:
        """`use` for plain (threaded) steps: the factory and the closer must be synchronous."""
        entry = self._acquire_sync(factory, closer, params)
        try:
            yield cast(T, entry.client)
        finally:
            for doomed in self._release(entry):
                _close_sync(doomed)

    def _key(self, factory: Callable[..., Any], params: dict[str, Any]) -> _Key:
        return (factory, tuple(sorted((k, _freeze(v)) for k, v in params.items())))

    def _hit(self, key: _Key) -> _Entry | None:
        # Under the lock.
        entry = self._entries.get(key)
        if entry is not None:
            entry.refs += 1
            entry.last_used = time.monotonic()
            self._entries.move_to_end(key)
        return entry

    def _lookup(self, key: _Key) -> tuple[_Entry | None, concurrent.futures.Future[Any], bool]:
        """(the live entry, or None with the future of its creation and whether we create it)."""
        with self._lock:
            entry = self._hit(key)
            if entry is not None:
                return entry, _DONE, False
            pending = self._creating.get(key)
            if pending is None:
                pending = self._creating[key] = concurrent.futures.Future()
                return None, pending, True
            return None, pending, False

    def _creation_failed(
        self, key: _Key, pending: concurrent.futures.Future[Any], exc: BaseException
    ) -> None:
        with self._lock:
            del self._creating[key]
        pending.set_exception(exc)
        pending.exception()  # retrieved: the waiters retry and raise their own

    async def _acquire_async(
        self, factory: Callable[..., Any], closer: Closer | None, params: dict[str, Any]
    ) -> _Entry:
        key = self._key(factory, params)
        while True:
            entry, pending, mine = self._lookup(key)
            if entry is not None:
                return entry
            if not mine:
                # Someone else is creating it: wait, then take a reference like any other user.
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(pending)
                continue
            try:
                client = factory(**params)
                if inspect.isawaitable(client):
                    client = await client
            except BaseException as exc:
                self._creation_failed(key, pending, exc)
                raise
            return await self._close_all_and_return(self._store(key, client, closer, pending))

    async def _close_all_and_return(self, stored: tuple[_Entry, list[_Entry]]) -> _Entry:
        entry, evicted = stored
        await self._close_all(evicted)
        return entry

    def _acquire_sync(
        self, factory: Callable[..., Any], closer: Closer | None, params: dict[str, Any]
    ) -> _Entry:
        key = self._key(factory, params)
        while True:
            entry, pending, mine = self._lookup(key)
            if entry is not None:
                return entry
            if not mine:
                with contextlib.suppress(Exception):
                    pending.result()
                continue
            try:
                client = factory(**params)
                if inspect.isawaitable(client):
                    if inspect.iscoroutine(client):
                        client.close()  # never awaited: no "was never awaited" warning
                    raise errors.ExecutorError(
                        f"resources.use_sync: {_name(factory)} is async; use `async with"
                        " resources.use(...)` in an async step"
                    )
            except BaseException as exc:
                self._creation_failed(key, pending, exc)
                raise
            entry, evicted = self._store(key, client, closer, pending)
            for doomed in evicted:
                _close_sync(doomed)
            return entry

    def _store(
        self,
        key: _Key,
        client: Any,
        closer: Closer | None,
        pending: concurrent.futures.Future[_Entry],
    ) -> tuple[_Entry, list[_Entry]]:
        with self._lock:
            entry = _Entry(key, client, closer, next(self._seq))
            entry.refs = 1
            self._entries[key] = entry
            del self._creating[key]
            self.created += 1
            evicted = self._evict_locked()
        pending.set_result(entry)
        log.debug("created client %s (%d shared clients)", _name(key[0]), len(self._entries))
        return entry, evicted

    def _release(self, entry: _Entry) -> list[_Entry]:
        with self._lock:
            entry.refs -= 1
            entry.last_used = time.monotonic()
            out = self._evict_locked()
            if entry.evicted and entry.refs == 0 and entry in self._doomed:
                self._doomed.remove(entry)
                out.append(entry)
            return out

    def _evict_locked(self) -> list[_Entry]:
        """Unlink what is over the bound or idle too long; return those closable now."""
        out: list[_Entry] = []
        while len(self._entries) > self.max_clients:
            # The least recently used idle client; if every one is busy, the least recently
            # used busy one, which its last user then closes.
            victim = next((e for e in self._entries.values() if e.refs == 0), None)
            self._unlink(victim or next(iter(self._entries.values())), out)
        now = time.monotonic()
        for entry in list(self._entries.values()):
            if entry.refs == 0 and now - entry.last_used > self.idle_ttl_s:
                self._unlink(entry, out)
        return out

    def _unlink(self, entry: _Entry, out: list[_Entry]) -> None:
        del self._entries[entry.key]
        entry.evicted = True
        if entry.refs == 0:
            out.append(entry)
        else:
            self._doomed.append(entry)

    # -- closing --

    def sweep(self) -> list[Any]:
        """Unlink idle clients; return their entries for `aclose_entries` (engine heartbeat)."""
        with self._lock:
            return self._evict_locked()

    async def aclose_entries(self, entries: list[Any]) -> None:
        await self._close_all(entries)

    async def aclose(self) -> None:
        """Close every client, newest first; clients in use are closed when their step is done."""
        with self._lock:
            out = [e for e in self._entries.values() if e.refs == 0]
            for entry in self._entries.values():
                entry.evicted = True
                if entry.refs > 0:
                    self._doomed.append(entry)
            self._entries.clear()
        out.sort(key=lambda e: e.seq, reverse=True)
        await self._close_all(out)

    async def _close_all(self, entries: list[_Entry]) -> None:
        for entry in entries:
            try:
                if entry.closer is not None:
                    result = entry.closer(entry.client)
                elif hasattr(entry.client, "aclose"):
                    result = entry.client.aclose()
                elif hasattr(entry.client, "close"):
                    result = entry.client.close()
                else:
                    result = None
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("closing shared client %s failed", _name(entry.key[0]))
            else:
                self.closed += 1


def _close_sync(entry: _Entry) -> None:
    try:
        if entry.closer is not None:
            result = entry.closer(entry.client)
        elif hasattr(entry.client, "close"):
            result = entry.client.close()
        else:
            result = None
        if inspect.isawaitable(result):
            # An async closer cannot run on a worker thread; close it properly or warn.
            if inspect.iscoroutine(result):
                result.close()
            log.warning(
                "shared client %s needs an async close; use it with `async with use(...)`",
                _name(entry.key[0]),
            )
    except Exception:
        log.exception("closing shared client %s failed", _name(entry.key[0]))


# The process-wide registry: what `resources.use` uses; the engine closes it when it drains.
default_registry = Resources()
use = default_registry.use
use_sync = default_registry.use_sync
