"""Turn an HTTP 429 (a response or the exception carrying one) into errors.RateLimited.

    try:
        reply = client.post(...)
    except SomeHTTPError as exc:
        if (limited := rate_limited_from(exc)) is not None:
            raise limited from exc
        raise

Raising RateLimited from a step puts it back in the queue after the delay without using a retry
attempt, and slows down the limits the step draws on. The delay is read from, in order:

    retry-after-ms       milliseconds (OpenAI sends it with Retry-After; the SDKs prefer it)
    Retry-After          seconds, or an HTTP date
    *ratelimit-reset*    x-ratelimit-reset-requests / -tokens ("1s", "6m0s", "250ms"),
                         x-ratelimit-reset (seconds, or a UNIX time), and the
                         anthropic-ratelimit-*-reset timestamps (RFC 3339): the reset of the
                         resource whose *-remaining header is 0; if none is, the earliest
                         reset; without remaining headers, the latest

Works by duck typing with urllib's HTTPError and http.client responses, and with the response
and error objects of requests, httpx, aiohttp and the anthropic and openai SDKs (`.status_code`,
`.status`, `.code`; `.headers`; an exception's `.response`). Tested against the real packages.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import time
from collections.abc import Mapping
from typing import Any

from executor import errors

DEFAULT_RETRY_AFTER_S = 1.0  # a 429 that does not say how long to wait
MAX_RETRY_AFTER_S = 24 * 3600.0
_UNIX_TIME_FLOOR = 1e9  # x-ratelimit-reset values above this are UNIX times, not delays
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def rate_limited_from(obj: object) -> errors.RateLimited | None:
    """A RateLimited for an HTTP 429 response (or an exception carrying one), else None."""
    status, headers = _status_and_headers(obj)
    if status != 429:
        return None
    delay = retry_after_s(headers)
    known = delay is not None
    delay = DEFAULT_RETRY_AFTER_S if delay is None else delay
    said = f"retry after {delay:.3g}s" if known else f"no delay given, retrying after {delay}s"
    return errors.RateLimited(retry_after=delay, message=f"HTTP 429 Too Many Requests: {said}")


def retry_after_s(headers: Mapping[str, str] | Any, now: float | None = None) -> float | None:
    """Seconds to wait according to a response's rate-limit headers, or None if none say."""
    if headers is None:
        return None
    now = time.time() if now is None else now
    get = _getter(headers)
    value = get("retry-after-ms")  # the more precise of the two, when both are given
    if value is not None:
        try:
            return _clamp(float(value) / 1000.0)
        except ValueError:
            pass
    value = get("retry-after")
    if value is not None:
        seconds = _seconds_or_date(value, now)
        if seconds is not None:
            return _clamp(seconds)
    return _reset_s(headers, get, now)


def _reset_s(headers: Any, get: Any, now: float) -> float | None:
    """From the `*ratelimit*reset*` headers: when the exhausted resource refills (the one whose
    `remaining` header says 0), else the earliest reset if the remaining counts are given (none
    is exhausted: something else refused), else the latest (we cannot tell which)."""
    exhausted: list[float] = []
    others: list[float] = []
    told = False
    for name in _names(headers):
        lower = name.lower()
        if "ratelimit" not in lower or "reset" not in lower:
            continue
        raw = get(name)
        seconds = None if raw is None else _reset_value(raw, now)
        if seconds is None:
            continue
        remaining = get(lower.replace("reset", "remaining"))
        told = told or remaining is not None
        (exhausted if remaining in ("0", "0.0") else others).append(seconds)
    if exhausted:
        return _clamp(max(exhausted))
    if not others:
        return None
    return _clamp(min(others) if told else max(others))


def _status_and_headers(obj: object) -> tuple[int | None, Any]:
    response = getattr(obj, "response", None)
    for candidate in (obj, response):
        if candidate is None:
            continue
        status = _status_of(candidate)
        if status is None:
            continue
        # The SDKs' errors (anthropic, openai) carry the status themselves and the headers on
        # their `.response`; aiohttp's ClientResponseError carries both itself.
        for holder in (candidate, obj, response):
            headers = getattr(holder, "headers", None)
            if headers is not None:
                return status, headers
        return status, None
    return None, None


def _status_of(candidate: object) -> int | None:
    for attr in ("status_code", "status", "code"):
        value = getattr(candidate, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    getcode = getattr(candidate, "getcode", None)
    if callable(getcode):
        code = getcode()
        return code if isinstance(code, int) and not isinstance(code, bool) else None
    return None


def _getter(headers: Any) -> Any:
    # Header maps are case-insensitive in every library but a plain dict: look both ways.
    def get(name: str) -> str | None:
        value = None
        try:
            value = headers.get(name)
        except (AttributeError, TypeError):
            return None
        if value is None and isinstance(headers, Mapping):
            for key in headers:
                if isinstance(key, str) and key.lower() == name.lower():
                    value = headers[key]
                    break
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        return None if value is None else str(value).strip()

    return get


def _names(headers: Any) -> list[str]:
    try:
        keys = headers.keys()
    except (AttributeError, TypeError):
        return []
    return [k.decode("latin-1") if isinstance(k, bytes) else str(k) for k in keys]


def _seconds_or_date(value: str, now: float) -> float | None:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp() - now


def _reset_value(value: str, now: float) -> float | None:
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return number - now if number > _UNIX_TIME_FLOOR else number
    parts = _DURATION.findall(value)
    if parts and "".join(n + u for n, u in parts) == value.replace(" ", ""):
        return sum(float(n) * _UNITS[u] for n, u in parts)
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp() - now


def _clamp(seconds: float) -> float:
    if seconds != seconds:  # NaN
        return DEFAULT_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))
