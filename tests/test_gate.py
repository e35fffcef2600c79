"""The door's steps, each on its own: admission (keys, drain), the bounded body, replay, and the answer's labels."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from starlette.types import Message

from service.auth import KeyRing
from service.gate import Answer, BodyTooLarge, Gate, endpoint_label, read_body, replaying
from service.metrics import Metrics
from service.repository import Repository
from service.settings import Settings
from service.state import AppState


def receiver(*messages: Message) -> Callable[[], Awaitable[Message]]:
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    return receive


def scope(path: str, *headers: tuple[bytes, bytes], method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "path": path, "method": method, "headers": list(headers)}


def gate(keys: list[str] | None = None, **settings: Any) -> Gate:
    config = Settings(**settings)
    state = AppState(config, Metrics(), Repository(config, Metrics()))
    return Gate(lambda *_: None, state, KeyRing(keys) if keys else None)  # type: ignore[arg-type]


def test_body_is_read_whole_up_to_the_limit() -> None:
    chunks = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"c"},
    ]
    assert asyncio.run(read_body(receiver(*chunks), 3)) == b"abc"
    with pytest.raises(BodyTooLarge, match="exceeds 2 bytes"):
        asyncio.run(read_body(receiver(*chunks), 2))
    assert asyncio.run(read_body(receiver({"type": "http.disconnect"}), 3)) is None  # the client went away


def test_the_buffered_body_is_replayed_once_then_the_client_is_heard() -> None:
    async def twice() -> list[Message]:
        receive = replaying(b"xyz", receiver())
        return [await receive(), await receive()]

    first, second = asyncio.run(twice())
    assert first == {"type": "http.request", "body": b"xyz", "more_body": False}
    assert second == {"type": "http.disconnect"}


def test_refusal_needs_a_key_except_on_probes_and_refuses_while_draining() -> None:
    door = gate(keys=["k" * 16])
    unauthorized = door.refusal(scope("/generate"))
    assert unauthorized is not None and unauthorized.status == 401 and unauthorized.field == "authorization"
    assert door.refusal(scope("/generate", (b"x-api-key", b"k" * 16))) is None
    assert door.refusal(scope("/healthz")) is None and door.refusal(scope("/metrics")) is not None
    door.state.draining = True
    draining = door.refusal(scope("/generate", (b"x-api-key", b"k" * 16)))
    assert draining is not None and draining.status == 503 and draining.headers == {"Retry-After": "1"}
    assert door.refusal(scope("/readyz")) is None  # probes answer while draining
    assert gate(keys=["k" * 16], metrics_public=True).refusal(scope("/metrics")) is None


def test_counted_tracks_requests_in_flight_but_not_probes() -> None:
    door = gate()
    with door.counted("/generate"):
        assert door.state.inflight == 1
        with door.counted("/readyz"):
            assert door.state.inflight == 1
    assert door.state.inflight == 0


def test_the_answer_labels_status_and_model_from_the_response() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    answer = Answer(send)
    start = {"type": "http.response.start", "status": 429, "headers": [(b"x-model", b"ring8")]}
    asyncio.run(answer(start))
    assert (answer.status, answer.model, sent) == (429, "ring8", [start])
    assert Answer(send).status == 500  # nothing sent: the request died before an answer


def test_endpoint_labels_are_bounded() -> None:
    assert endpoint_label("/generate") == "/generate" and endpoint_label("/models/x") == "/models/{name}"
    assert endpoint_label("/no/such/path/123") == "other"
