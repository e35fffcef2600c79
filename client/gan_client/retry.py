"""Retries: 429 and 503 after the service's Retry-After, transport errors only for idempotent calls.

A 429 or 503 means the service refused the request before computing anything, so any call may be sent
again. A transport error (connection refused or reset, a timeout, a truncated body) may come after the
service did the work, so only calls whose answer is fixed by the request are sent again: GETs, and sample
calls with an explicit seed. Nothing else is retried: a 4xx other than 429 would fail the same way again.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from gan_client.errors import ApiError

log = logging.getLogger("gan_client")

RETRIED_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in attempts and in total time.

    Retry `k` (0-based) waits `min(max_backoff_s, backoff_s * 2**k)`, jittered into its upper half; when the
    service sent Retry-After, at least that long, plus up to `jitter` of it so that clients shed together do
    not all come back in the same instant. A wait that would end past `max_total_s` from the first attempt
    is not started: the last error is raised instead.
    """

    max_attempts: int = 8
    max_total_s: float = 120.0
    backoff_s: float = 0.25
    max_backoff_s: float = 30.0
    jitter: float = 0.2

    def delay_s(self, retry: int, retry_after_s: float | None, unit: float) -> float:
        """The wait before retry `retry`; `unit` is a uniform draw in [0, 1)."""
        backoff = min(self.max_backoff_s, self.backoff_s * 2.0**retry)
        if retry_after_s is None:
            return backoff * (0.5 + 0.5 * unit)
        return max(retry_after_s, backoff) + self.jitter * retry_after_s * unit


NO_RETRIES = RetryPolicy(max_attempts=1)


def retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class Retrier:
    """Runs one call under a policy; sleep, clock and the jitter's draws are injectable (tests sleep nowhere)."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    uniform: Callable[[], float] = random.random

    def send(self, attempt: Callable[[], httpx.Response], *, idempotent: bool, what: str) -> httpx.Response:
        """`attempt()` until it answers 2xx; ApiError for an answer that is not retried or the last one.

        `attempt` sends the request and reads its answer (for a streamed one it must close it when it is not
        2xx); `what` names the call in logs and errors.
        """
        start = self.clock()
        retry = 0
        while True:
            wait_hint: float | None = None
            try:
                response = attempt()
            except httpx.TransportError as error:
                if not idempotent:
                    error.add_note(f"{what}: not retried (the call is not idempotent: give it a seed)")
                    raise
                failure: Exception = error
            else:
                if response.is_success:
                    return response
                wait_hint = retry_after_s(response)
                failure = ApiError.of(response, wait_hint)
                if response.status_code not in RETRIED_STATUSES:
                    raise failure
            delay = self.policy.delay_s(retry, wait_hint, self.uniform())
            elapsed = self.clock() - start
            if retry + 1 >= self.policy.max_attempts or elapsed + delay > self.policy.max_total_s:
                failure.add_note(f"{what}: gave up after {retry + 1} attempts in {elapsed:.1f} s")
                raise failure
            log.info("%s: %s; retry %d in %.2f s", what, failure, retry + 1, delay)
            self.sleep(delay)
            retry += 1
