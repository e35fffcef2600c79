"""gan_client's retries against scripted answers (httpx.MockTransport): which answers are retried, after how
long, and when it gives up. The sleeps are recorded, never slept; the clock advances by them."""

from __future__ import annotations

import email.utils
import io
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from gan_client import ApiError, Client, Retrier, RetryPolicy

SAMPLES = np.arange(8, dtype=np.uint8).reshape(2, 2, 2, 1)


def npy_answer() -> httpx.Response:
    buffer = io.BytesIO()
    np.save(buffer, SAMPLES)
    headers = {"X-Model": "m", "X-Model-Version": "1", "X-Onnx-Sha256": "ab", "X-Provider": "CPU"}
    headers |= {"X-Seed": "7", "X-Sample-Start": "0", "X-Sample-Count": "2"}
    return httpx.Response(200, content=buffer.getvalue(), headers=headers)


def npz_answer() -> httpx.Response:
    buffer = io.BytesIO()
    np.savez(buffer, x=SAMPLES, seed=np.array(1, dtype=np.uint64), index=np.arange(2))
    headers = {"X-Model": "m", "X-Model-Version": "1", "X-Onnx-Sha256": "ab", "X-Provider": "CPU"}
    headers |= {"X-Seed": "1", "X-Total-Rows": "4"}
    return httpx.Response(200, content=buffer.getvalue(), headers=headers)


def refusal(status: int, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, json={"detail": f"refused {status}", "field": None}, headers=headers)


class Script:
    """A transport answering each request with the next of `answers` (a response, or an error to raise), and a
    retrier whose sleeps are recorded and advance its clock."""

    def __init__(
        self,
        answers: list[httpx.Response | Exception],
        uniform: float = 0.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.answers, self.requests, self.sleeps, self.now = list(answers), 0, list[float](), 0.0

        def handle(request: httpx.Request) -> httpx.Response:
            self.requests += 1
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.now += seconds

        retrier = Retrier(
            policy or RetryPolicy(), sleep=sleep, clock=lambda: self.now, uniform=lambda: uniform
        )
        self.client = Client("http://gan.test", transport=httpx.MockTransport(handle), retrier=retrier)


def seeded(client: Client) -> object:
    return client.generate("m", 2, seed=7)


def test_429_and_503_wait_what_retry_after_says_then_succeed() -> None:
    script = Script([refusal(429, "3"), refusal(503, "1"), refusal(429, "2"), npy_answer()])
    samples = script.client.generate("m", 2)  # not even seeded: a refusal computed nothing
    assert script.sleeps == [3.0, 1.0, 2.0] and script.requests == 4
    assert np.array_equal(samples.x, SAMPLES) and samples.seed == 7 and samples.indices == [0, 1]


def test_jitter_only_lengthens_the_wait_the_service_asked_for() -> None:
    script = Script(
        [refusal(429, "4"), refusal(429, "4"), npy_answer()], uniform=0.999, policy=RetryPolicy(jitter=0.25)
    )
    seeded(script.client)
    assert all(4.0 <= s < 5.0 for s in script.sleeps), script.sleeps


def test_without_retry_after_the_backoff_doubles_with_jitter() -> None:
    answers: list[httpx.Response | Exception] = [*[refusal(503)] * 4, npy_answer()]
    low = Script(answers, uniform=0.0, policy=RetryPolicy(backoff_s=0.5, max_backoff_s=2.0))
    seeded(low.client)
    high = Script(answers, uniform=0.999, policy=RetryPolicy(backoff_s=0.5, max_backoff_s=2.0))
    seeded(high.client)
    assert low.sleeps == [0.25, 0.5, 1.0, 1.0]  # the upper half of 0.5, 1, 2, 2 (capped)
    assert high.sleeps == pytest.approx([0.5, 1.0, 2.0, 2.0], rel=1e-3)


def test_retry_after_as_an_http_date_is_honoured() -> None:
    later = email.utils.formatdate(time.time() + 100, usegmt=True)
    script = Script([refusal(429, later), refusal(429, "Wed, 21 Oct 2015 07:28:00 GMT"), npy_answer()])
    seeded(script.client)
    assert script.sleeps[0] == pytest.approx(100, abs=5)
    assert script.sleeps[1] == 0.5  # a date in the past asks for no wait: the backoff's own (retry 1)


@pytest.mark.parametrize("status", [400, 401, 404, 409, 413, 422, 500, 504])
def test_other_errors_are_not_retried_and_carry_detail_and_field(status: int) -> None:
    answer = httpx.Response(status, json={"detail": "n: at most 8 (GAN_MAX_N)", "field": "n"})
    script = Script([answer])
    with pytest.raises(ApiError) as raised:
        seeded(script.client)
    assert script.requests == 1 and script.sleeps == []
    assert (raised.value.status, raised.value.field) == (status, "n")
    assert "GAN_MAX_N" in raised.value.detail


def test_attempts_are_bounded_and_the_last_refusal_is_raised() -> None:
    script = Script([refusal(429, "1")] * 10, policy=RetryPolicy(max_attempts=4))
    with pytest.raises(ApiError) as raised:
        seeded(script.client)
    assert script.requests == 4 and script.sleeps == [1.0, 1.0, 1.0]
    assert raised.value.status == 429 and raised.value.retry_after_s == 1.0
    assert any("gave up after 4 attempts" in note for note in raised.value.__notes__)


def test_total_time_is_bounded_a_wait_past_it_is_not_started() -> None:
    script = Script(
        [refusal(429, "2"), refusal(429, "2"), refusal(429, "30")], policy=RetryPolicy(max_total_s=10.0)
    )
    with pytest.raises(ApiError):
        seeded(script.client)
    assert script.sleeps == [2.0, 2.0] and script.requests == 3  # 4 s + 30 s would pass 10 s


CONNECTION_ERRORS: list[Callable[[], Exception]] = [
    lambda: httpx.ConnectError("refused"),
    lambda: httpx.ReadTimeout("slow"),
    lambda: httpx.RemoteProtocolError("closed mid-answer"),
]


@pytest.mark.parametrize("error", CONNECTION_ERRORS)
def test_transport_errors_are_retried_for_seeded_calls(error: Callable[[], Exception]) -> None:
    script = Script([error(), error(), npy_answer()])
    assert np.array_equal(script.client.generate("m", 2, seed=7).x, SAMPLES)
    assert script.requests == 3 and len(script.sleeps) == 2


@pytest.mark.parametrize("error", CONNECTION_ERRORS)
def test_transport_errors_are_not_retried_for_calls_that_are_not_idempotent(
    error: Callable[[], Exception],
) -> None:
    script = Script([error(), npy_answer()])
    with pytest.raises(httpx.TransportError) as raised:
        script.client.generate("m", 2)  # no seed: a second call is other samples, so not sent again
    assert script.requests == 1 and script.sleeps == []
    assert any("not idempotent" in note for note in raised.value.__notes__)
    dataset = Script([error(), httpx.Response(202, json={"id": "j1", "url": "/datasets/j1"})])
    with pytest.raises(httpx.TransportError):
        dataset.client.create_dataset("m", seed=1, n=10)  # creates a job: never sent twice
    assert dataset.requests == 1


def test_what_is_idempotent() -> None:
    """GETs, seeded sample calls, /interpolate (its ends are explicit) and /edit are sent again."""
    calls: list[tuple[Callable[[Client], object], httpx.Response]] = [
        (lambda c: c.models(), httpx.Response(200, json={"models": []})),
        (lambda c: c.augment("m", n=4, seed=1), npz_answer()),
        (lambda c: c.interpolate("m", {"seed": 1}, {"seed": 2}, steps=2), npy_answer()),
        (lambda c: c.edit("m", [b"png bytes"]), npy_answer()),
        (lambda c: c.edit("m", [b"png bytes"], upload="multipart"), npy_answer()),
    ]
    for call, answer in calls:
        script = Script([httpx.ConnectError("refused"), answer])
        call(script.client)
        assert script.requests == 2
