"""A per-key rate limit: a fixed-window counter, in Redis (shared by every API process) or in
the process (embedded mode).

`TRAINYARD_RATE_LIMIT` is `N/second|minute|hour` (default `1200/minute`). Storage: the
`TRAINYARD_RATE_LIMIT_STORAGE_URL` setting if given (`redis://...` or `memory://`), else Redis
when the broker is Redis, else in-process memory. With in-process memory each gunicorn worker
counts on its own (the embedded mode runs two), so a key may get up to that many times the limit.

The Redis counter is `INCR` + `EXPIRE` on a key per (API key, window) in one round trip. If Redis
cannot be reached the request is let through (fail open, logged) and Redis is left alone for a
few seconds, so a broker outage never makes the API hang or refuse reads; the rate limit is a
protection against floods, not an accounting system.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import redis
from flask import current_app, g

from service.problems import ApiError

log = logging.getLogger(__name__)

PERIODS = {"second": 1, "minute": 60, "hour": 3600}
REDIS_TIMEOUT_S = 0.25
REDIS_BACKOFF_S = 5.0


@dataclass(frozen=True)
class Rate:
    limit: int
    period: int  # seconds

    @classmethod
    def parse(cls, text: str) -> Rate:
        """`"600/minute"` -> Rate(600, 60); ValueError on anything else."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(second|minute|hour)s?\s*", text)
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"rate limit {text!r}: expected N/second, N/minute or N/hour")
        return cls(int(m.group(1)), PERIODS[m.group(2)])


class Storage(Protocol):
    def hit(self, key: str, window: int, period: int) -> int | None:
        """Count one hit of `key` in `window`; the count so far, or None if unknown."""


class MemoryStorage:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    def hit(self, key: str, window: int, period: int) -> int:
        with self._lock:
            if len(self._counts) > 10_000:
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
            count = self._counts.get((key, window), 0) + 1
            self._counts[(key, window)] = count
            return count


class RedisStorage:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client = redis.Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self._down_until = 0.0

    def hit(self, key: str, window: int, period: int) -> int | None:
        if time.monotonic() < self._down_until:
            return None
        name = f"trainyard:ratelimit:{key}:{window}"
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.incr(name)
            pipe.expire(name, period + 1)
            count, _ = pipe.execute()
        except redis.RedisError as exc:
            self._down_until = time.monotonic() + REDIS_BACKOFF_S
            log.warning("rate limit storage unreachable, not limiting for now: %s", exc)
            return None
        return int(count)


def make_storage(url: str) -> Storage:
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStorage(url)
    if url in ("", "memory://"):
        return MemoryStorage()
    raise ValueError(f"rate limit storage {url!r}: use redis://... or memory://")


class RateLimiter:
    def __init__(self, rate: Rate, storage: Storage) -> None:
        self.rate = rate
        self.storage = storage

    def check(self, key: str, now: float | None = None) -> int | None:
        """None if the hit is allowed, else the seconds until the window ends (Retry-After)."""
        now = time.time() if now is None else now
        window = int(now // self.rate.period)
        count = self.storage.hit(key, window, self.rate.period)
        if count is None or count <= self.rate.limit:
            return None
        return max(1, math.ceil((window + 1) * self.rate.period - now))


def limiter_for(rate: str, storage_url: str, broker_url: str) -> RateLimiter:
    """The app's limiter: storage from `storage_url`, else Redis if the broker is, else memory."""
    if not storage_url:
        storage_url = broker_url if broker_url.startswith(("redis://", "rediss://")) else ""
    return RateLimiter(Rate.parse(rate), make_storage(storage_url))


def enforce() -> None:
    """`before_request` (after authentication): count the request against its key; 429 past
    the limit, with `Retry-After` in seconds."""
    key_id = g.get("api_key_id")
    if key_id is None:
        return
    limiter: RateLimiter = current_app.extensions["rate_limiter"]
    retry_after = limiter.check(key_id)
    if retry_after is not None:
        rate = limiter.rate
        raise ApiError(
            429,
            f"Rate limit of {rate.limit} requests per {rate.period} s for this API key "
            f"exceeded; retry in {retry_after} s.",
            code="rate_limited",
            headers={"Retry-After": str(retry_after)},
        )
