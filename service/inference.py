"""Rows to a batcher and back: the request waits for its rows, and a client that leaves cancels them."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from service.batcher import Batcher, Feeds
from service.editing import encoder_feeds, image_classes, split_encoded
from service.errors import ClientGone, EditingUnavailable
from service.images import decode_images
from service.monitor import ENCODED, counted
from service.plans import check_limit
from service.schemas import Label
from service.state import AppState
from service.versions import ReadyModel

log = logging.getLogger("service.inference")


async def run_batch(
    batcher: Batcher, feeds: Feeds, rows: int, request: Request, state: AppState
) -> np.ndarray:
    """Submit to the batcher; if the client disconnects first, cancel so its rows are never computed."""
    result = batcher.enqueue(feeds, rows, state.settings.request_timeout_s)
    gone = asyncio.ensure_future(_disconnected(request))
    gone.add_done_callback(lambda _: result.cancel())  # a no-op once the result is in
    try:
        return await result
    except asyncio.CancelledError:
        if gone.done() and not gone.cancelled():
            raise ClientGone() from None
        raise
    finally:
        gone.cancel()


async def run_model(
    model: ReadyModel,
    feeds: Feeds,
    rows: int,
    request: Request,
    state: AppState,
    *,
    monitored: bool | None = None,
) -> np.ndarray:
    """The generator's output for these feeds, counted as samples of the model and, when they are samples of
    its distribution, sketched by the output monitor: `monitored` says whether they are (a route that knows,
    e.g. that its latents are truncated, passes False); None: by the request (service.monitor.counted)."""
    x = await run_batch(model.batcher, feeds, rows, request, state)
    metrics, settings = state.metrics, state.settings
    metrics.samples.labels(model.name).inc(rows)
    if counted(request.scope) if monitored is None else monitored:
        monitor = metrics.outputs.monitor(model, settings.monitor_window, settings.monitor_sample)
        if monitor is not None:
            try:
                monitor.submit(x, feeds.get("c"))
            except Exception:  # the monitor must never cost a request its answer
                log.exception("output monitor of %s failed on %d rows", model.key, rows)
    return x


async def encode_images(
    model: ReadyModel,
    images: list[bytes],
    labels: Label | list[Label] | None,
    resize: bool,
    field: str,
    request: Request,
    state: AppState,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Uploaded images -> (z, class per image): decoded off the event loop, encoded through the batcher."""
    if model.encoder is None:
        raise EditingUnavailable(model.editing_reason)
    request.scope[ENCODED] = True  # the generator rows that follow are not samples of the prior
    manifest, settings = model.manifest, state.settings
    check_limit(len(images), settings.max_edit_images, field, "GAN_MAX_EDIT_IMAGES")
    known = image_classes(labels, manifest, len(images), field.replace("images", "labels"))
    x = await run_in_threadpool(
        decode_images,
        images,
        manifest.output_shape,
        resize=resize,
        max_pixels=settings.max_image_pixels,
        field=field,
    )
    out = await run_batch(model.encoder.batcher, encoder_feeds(x, known, manifest), len(x), request, state)
    return split_encoded(out, manifest, known)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
