"""The playground page at `/` and the offline `/docs`, driven in Debian's Chromium by Playwright as a person
would use them, against a real `python -m service` on 127.0.0.1.

The network is off for the browser: every request not to 127.0.0.1 is aborted and recorded, and each test
ends by asserting there was none, and that the console had no error or warning (except the failed requests a
test provokes on purpose). Screenshots of each state go to $PLAYGROUND_SCREENSHOTS (default: a temporary
folder); `PLAYGROUND_SCREENSHOTS=docs .venv/bin/pytest tests/test_playground.py` refreshes docs/playground-*.png.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, Playwright, Route, sync_playwright

from service.main import create_app
from service.playground import STATIC
from service.settings import Settings
from tests.support import ROOT, running_service

CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it): Playwright downloads no browser
KEY = "playground-key-0123456789"
WAIT_MS = 60_000  # every wait is bounded: a state, or a failure naming it
PAGE_BUDGET = 64 * 1024  # the page's own files (HTML, CSS, JS, icon), uncompressed


# --- the browser -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("PLAYGROUND_SCREENSHOTS")
    return ROOT / folder if folder else tmp_path_factory.mktemp("screenshots")


class Watch:
    """A browser context with the network off and its console recorded."""

    def __init__(self, browser: Browser, shots: Path, **context: Any) -> None:
        self.context = browser.new_context(**({"viewport": {"width": 1000, "height": 800}} | context))
        self.context.set_default_timeout(WAIT_MS)
        self.external: list[str] = []
        self.console: list[str] = []
        self.allowed: list[str] = []
        self.shots = shots
        self.context.route("**/*", self.local_only)
        self.page = self.context.new_page()
        self.page.on("console", self.note)
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))

    def local_only(self, route: Route) -> None:
        if re.match(r"http://127\.0\.0\.1:\d+/", route.request.url):
            route.continue_()
        else:
            self.external.append(route.request.url)
            route.abort()

    def note(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")

    def allow(self, *statuses: int) -> None:
        """The browser logs the failed requests a test provokes: those, and only those, are expected."""
        self.allowed += [
            f"error: Failed to load resource: the server responded with a status of {s} " for s in statuses
        ]

    def check(self) -> None:
        unexpected = [m for m in self.console if not any(m.startswith(a) for a in self.allowed)]
        assert unexpected == [], unexpected
        assert self.external == [], f"requests off 127.0.0.1: {self.external}"

    def shot(self, target: Page | Locator, name: str) -> None:
        """A small PNG (a 64-colour palette: the page is mostly flat colour and grey samples)."""
        image = Image.open(io.BytesIO(target.screenshot()))
        image.convert("RGB").quantize(64).save(self.shots / f"playground-{name}.png", optimize=True)


@pytest.fixture
def watch(browser: Browser, shots: Path) -> Iterator[Watch]:
    session = Watch(browser, shots)
    yield session
    session.context.close()
    session.check()


@pytest.fixture(scope="module")
def bundled_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """conftest's shared `python -m service`, with its dataset jobs under a temporary GAN_DATA_DIR."""
    with running_service({"GAN_DATA_DIR": str(tmp_path_factory.mktemp("data"))}) as (url, _):
        yield url


def opened(watch: Watch, url: str) -> Page:
    """The page, as a newcomer opens it: samples of the default model, with no click."""
    page = watch.page
    page.goto(f"{url}/")
    page.wait_for_selector("#grid[data-state=ready] .tile img")
    page.wait_for_selector("#strip[data-state=ready] .tile img")
    return page


# --- pixels ----------------------------------------------------------------------------------------------


def pixels(data: bytes | str) -> np.ndarray:
    """An image's pixels, from PNG bytes or a data: URL."""
    if isinstance(data, str):
        data = base64.b64decode(data.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)


def sources(page: Page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map(e => e.src)")


def generated(url: str, **body: Any) -> list[np.ndarray]:
    answer = httpx.post(f"{url}/generate", json=body, timeout=60).json()
    return [pixels(base64.b64decode(b)) for b in answer["images"]]


def raw_get(url: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (clients resolve "..", a hand-made request need not)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    return int(answer.split(b" ", 2)[1]), answer


# --- the page --------------------------------------------------------------------------------------------


def test_the_page_shows_samples_at_once_with_their_provenance(watch: Watch, bundled_service: str) -> None:
    page = opened(watch, bundled_service)
    models = httpx.get(f"{bundled_service}/models").json()["models"]
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [
        m["name"] for m in models
    ]
    assert page.input_value("#model") == "fashion-cgan"
    version = page.locator("#version option:checked").inner_text()
    assert "v4" in version and "CPU" in version and "gates passed" in version
    info = page.inner_text("#model-info")
    assert "CPUExecutionProvider" in info and "class_accuracy >= 0.9" in info and "✓ pass" in info
    assert "fd_ratio" in info and "real-vs-real floor" in info
    # The samples are the API's own: seed 7, classes in turn.
    shown = [pixels(s) for s in sources(page, "#grid .tile img")]
    assert len(shown) == 16
    expected = generated(bundled_service, model="fashion-cgan", n=16, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(shown, expected, strict=True))
    # Provenance on hover (title) and on click (the detail panel); each image downloads.
    fourth = page.locator("#grid .tile").nth(3)
    title = fourth.locator("button").get_attribute("title") or ""
    for part in ("model: fashion-cgan", "version: 4", "seed: 7", "index: 3", "class: Dress"):
        assert part in title, title
    fourth.locator("button").click()
    detail = page.inner_text("#detail")
    assert "seed\n7" in detail and "index\n3" in detail and "onnx_sha256" in detail, detail
    with page.expect_download() as download:
        fourth.locator("figcaption a").click()
    assert download.value.suggested_filename == "fashion-cgan-v4-seed7-i3.png"
    assert np.array_equal(pixels(Path(download.value.path()).read_bytes()), expected[3])
    watch.shot(page, "samples")


def test_changing_the_class_changes_the_images(watch: Watch, bundled_service: str) -> None:
    page = opened(watch, bundled_service)
    grid = page.locator("#grid")
    before = pixels(grid.screenshot())
    page.select_option("#label", "Bag")
    page.wait_for_selector("#grid[data-state=ready] .tile button[title*='class: Bag']")
    after = pixels(grid.screenshot())
    assert before.shape == after.shape and np.abs(before - after).mean() > 5  # what the screen shows changed
    bags = generated(bundled_service, model="fashion-cgan", n=16, seed=7, labels="Bag")
    shown = [pixels(s) for s in sources(page, "#grid .tile img")]
    assert all(np.array_equal(a, b) for a, b in zip(shown, bags, strict=True))
    # A 2-D model: its samples as a scatter plot over the mixture's modes.
    page.select_option("#model", "grid25")
    page.wait_for_selector("#scatter-box:not([hidden])")
    page.wait_for_selector("#grid[data-state=ready]", state="attached")
    page.wait_for_selector("#strip[data-state=ready]", state="attached")
    assert page.is_hidden("#grid") and page.is_hidden(".cond >> nth=0")
    assert "512 samples of grid25 v3" in page.inner_text("#scatter-caption")
    assert "25 modes" in page.inner_text("#scatter-caption")
    plot = pixels(page.locator("#scatter").screenshot())
    assert (np.abs(plot - 255).sum(axis=2) > 0).mean() > 0.005  # points, modes and path are drawn
    box = page.locator("#scatter").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # the sample near (0, 0)
    detail = page.inner_text("#detail")
    assert "grid25" in detail and "index" in detail and "seed\n7" in detail, detail
    watch.shot(page.locator("#sample-panel"), "scatter")
    # Every 2-D mixture the project trains on is drawn with its modes: the seeds' two Gaussians too.
    page.select_option("#model", "gauss2")
    page.wait_for_function("document.querySelector('#scatter-caption').innerText.includes('gauss2 v1')")
    assert "over the 2 modes" in page.inner_text("#scatter-caption"), page.inner_text("#scatter-caption")


def test_the_slider_scrubs_along_the_interpolation(watch: Watch, bundled_service: str) -> None:
    page = opened(watch, bundled_service)
    strip = sources(page, "#strip .tile img")
    assert len(strip) == 9
    assert (
        page.input_value("#start-label") == "T-shirt/top" and page.input_value("#end-label") == "Ankle boot"
    )
    start = page.get_attribute("#scrub-img", "src")
    assert start == strip[0]
    page.focus("#scrub")  # by keyboard
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    assert page.input_value("#scrub") == "4"
    assert page.inner_text("#scrub-t") == "t = 0.500"
    middle = page.get_attribute("#scrub-img", "src")
    assert middle == strip[4] and np.abs(pixels(middle or "") - pixels(start or "")).mean() > 1
    assert page.get_attribute("#strip .tile:nth-child(5) button", "aria-pressed") == "true"
    title = page.get_attribute("#strip .tile:nth-child(5) button", "title") or ""
    assert "t: 0.5" in title and "seed 1 T-shirt/top → seed 2 Ankle boot" in title, title
    page.keyboard.press("End")
    assert page.inner_text("#scrub-t") == "t = 1.000" and page.get_attribute("#scrub-img", "src") == strip[8]
    watch.shot(page.locator("#interp-panel"), "interpolation")


def test_editing_an_uploaded_and_a_dropped_image(watch: Watch, bundled_service: str, tmp_path: Path) -> None:
    page = opened(watch, bundled_service)
    answer = httpx.post(
        f"{bundled_service}/generate", json={"model": "fashion-cgan", "n": 1, "seed": 3, "labels": "Shirt"}
    ).json()
    shirt = tmp_path / "shirt.png"
    shirt.write_bytes(base64.b64decode(answer["images"][0]))
    page.select_option("#edit-op", "label")
    page.select_option("#edit-class", "Dress")
    page.set_input_files("#edit-file", str(shirt))
    page.wait_for_selector("#edit-result[data-state=ready] .tile:nth-child(3) img")
    captions = page.eval_on_selector_all("#edit-result figcaption span", "els => els.map(e => e.textContent)")
    assert captions == ["original", "reconstruction", "edit"]
    original, reconstruction, edited = (pixels(s) for s in sources(page, "#edit-result .tile img"))
    assert np.array_equal(original, pixels(shirt.read_bytes()))
    with shirt.open("rb") as file:
        api = httpx.post(f"{bundled_service}/edit", data={"model": "fashion-cgan", "resize": "true"},
                         files={"image": ("shirt.png", file, "image/png")}).json()  # fmt: skip
    assert np.array_equal(reconstruction, pixels(base64.b64decode(api["images"][0])))
    assert np.abs(edited - reconstruction).mean() > 1
    title = page.get_attribute("#edit-result .tile:nth-child(3) button", "title") or ""
    assert '"label":"Dress"' in title and f"encoder_sha256: {api['encoder_sha256']}" in title, title
    watch.shot(page.locator("#edit-panel"), "editing")
    # Dragged onto the drop zone: a grey 40x40 image, resized to 28x28 by the service.
    png = io.BytesIO()
    Image.new("L", (40, 40), 128).save(png, "PNG")
    transfer = page.evaluate_handle(
        """b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0)); const dt = new DataTransfer();
                    dt.items.add(new File([bytes], "grey.png", {type: "image/png"})); return dt; }""",
        base64.b64encode(png.getvalue()).decode(),
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#edit-result[data-state=ready] .tile button[title*='grey.png']")
    assert page.locator("#edit-result .tile").count() == 3
    # Or a sample of the grid: selected by a click, then used.
    page.click("#grid .tile:nth-child(6) button")
    page.click("#edit-use-selected")
    page.wait_for_selector("#edit-result[data-state=ready] .tile button[title*='sample-5.png']")
    first = sources(page, "#edit-result .tile img")[0]
    assert np.array_equal(pixels(first), pixels(sources(page, "#grid .tile:nth-child(6) img")[0]))


def test_a_synthetic_page_downloads_and_the_jobs_panel_follows_the_schema(
    watch: Watch, bundled_service: str
) -> None:
    page = opened(watch, bundled_service)
    page.fill("#aug-rows", "3")
    page.fill("#aug-limit", "20")
    with page.expect_download() as download:
        page.click("#augment")
    page.wait_for_selector("#augment-status[data-state=ready]")
    assert download.value.suggested_filename == "fashion-cgan-v4-augment-seed7-rows0-19.npz"
    with np.load(download.value.path()) as page_of_set:
        assert page_of_set["x"].shape == (20, 28, 28, 1) and page_of_set["index"].tolist() == list(range(20))
        assert int(page_of_set["seed"]) == 7 and sorted(set(page_of_set["y"].tolist())) == list(range(7))
    assert "rows 0–19 of 30" in page.inner_text("#augment-status")

    # The jobs panel is there only when the server's schema has /datasets: seen with and without it.
    def schema(has_datasets: bool) -> Callable[[Route], None]:
        def answer(route: Route) -> None:
            paths = route.fetch().json()
            paths["paths"] = {p: v for p, v in paths["paths"].items() if not p.startswith("/datasets")}
            if has_datasets:
                paths["paths"]["/datasets"] = {"post": {"responses": {"202": {"description": "a job"}}}}
            route.fulfill(json=paths)

        return answer

    for has_datasets in (False, True):
        page.route("**/openapi.json", schema(has_datasets))
        opened(watch, bundled_service)
        page.wait_for_selector("#jobs[data-state=ready]", state="attached")  # the schema was read
        assert page.is_visible("#jobs") is has_datasets
        page.unroute("**/openapi.json")


def job_started(page: Page) -> dict[str, Any]:
    """Clicks "Start job": the 202 answer's job, and the request's body."""
    with page.expect_response(
        lambda r: r.url.endswith("/datasets") and r.request.method == "POST"
    ) as created:
        page.click("#ds-start")
    assert created.value.status == 202, created.value.text()
    return created.value.json() | {"body": created.value.request.post_data_json}


def test_a_dataset_job_runs_from_the_page_and_its_shards_download(watch: Watch, bundled_service: str) -> None:
    url = bundled_service
    page = opened(watch, url)
    page.wait_for_selector("#jobs[data-state=ready]:not([hidden]) #ds-empty:not([hidden])")
    assert "fashion-cgan v4 · seed 7 · truncation off · every class" in page.inner_text("#ds-from")
    # Three shards of ten rows: 3 rows of every class of fashion-cgan, as npz.
    page.fill("#ds-rows", "3")
    page.fill("#ds-shard-rows", "10")
    page.select_option("#ds-format", "npz")
    job = job_started(page)
    fashion = next(m for m in httpx.get(f"{url}/models").json()["models"] if m["name"] == "fashion-cgan")
    classes = next(v for v in fashion["versions"] if v["version"] == 4)["manifest"]["class_names"]
    assert job["body"] == {
        "model": "fashion-cgan", "version": 4, "seed": 7, "per_class": dict.fromkeys(classes, 3),
        "shard_rows": 10, "format": "npz",
    }  # fmt: skip
    done = f"#ds-job[data-id='{job['id']}'][data-state=done]"
    page.wait_for_selector(done)
    assert page.inner_text("#ds-state") == "done" and page.inner_text("#ds-percent") == "100 %"
    assert page.eval_on_selector("#ds-progress", "p => [p.value, p.max]") == [30, 30]
    assert "30 / 30 rows · 3 / 3 shards" in page.inner_text("#ds-facts")
    page.wait_for_selector("#jobs[data-polling=off]", state="attached")  # the job ended: no timer left
    status = httpx.get(f"{url}/datasets/{job['id']}").json()
    assert status["state"] == "done" and [s["k"] for s in status["shards"]] == [0, 1, 2]
    assert page.locator("#ds-shards li").count() == 3
    # A shard from the page: its bytes are the ones the API lists and sends, and checked in the page too.
    with page.expect_download() as download:
        page.click("#ds-shards li:nth-child(2) a")
    page.wait_for_selector("#ds-download[data-state=ready]")
    data = Path(download.value.path()).read_bytes()
    shard = httpx.get(f"{url}/datasets/{job['id']}/shards/1")
    assert hashlib.sha256(data).hexdigest() == shard.headers["x-sha256"] == status["shards"][1]["sha256"]
    assert data == shard.content and download.value.suggested_filename == "shard-00001.npz"
    note = page.inner_text("#ds-download")
    assert f"sha256 {status['shards'][1]['sha256']} matches X-Sha256 and the job's listing" in note, note
    with np.load(download.value.path()) as rows:
        assert rows["x"].shape == (10, 28, 28, 1) and rows["index"].tolist() == list(range(10, 20))
    # The Croissant metadata, and the job in the list.
    with page.expect_download() as metadata:
        page.click("#ds-meta")
    croissant = json.loads(Path(metadata.value.path()).read_text())
    sums = {d.get("sha256") for d in croissant["distribution"]}
    assert {s["sha256"] for s in status["shards"]} <= sums, sums
    row = page.locator(f"#ds-list tr[data-id='{job['id']}']")
    assert (
        row.locator("td").nth(3).inner_text() == "done" and row.locator("td").nth(4).inner_text() == "30 / 30"
    )
    watch.shot(page.locator("#jobs"), "datasets")

    # A long job, cancelled from the list (deleted, should it have ended first); polling pauses off screen.
    page.select_option("#ds-class", "Bag")
    page.fill("#ds-rows", "100000")
    page.fill("#ds-shard-rows", "500")
    page.select_option("#ds-format", "webdataset")
    long = job_started(page)
    assert long["body"]["per_class"] == {"Bag": 100000} and long["body"]["format"] == "webdataset"
    page.wait_for_selector(f"#ds-list tr[data-id='{long['id']}']")
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_selector("#jobs:not([data-polling=on])", state="attached")
    page.locator("#ds-job").scroll_into_view_if_needed()
    stop = page.locator(f"#ds-list tr[data-id='{long['id']}'] button").nth(1)
    assert stop.inner_text() in ("Cancel", "Delete")
    stop.click()
    page.wait_for_selector(
        f"#ds-status:has-text('deleted job {long['id']}'), #ds-status:has-text('Deleted job {long['id']}')"
    )
    page.wait_for_selector("#ds-list[data-state=ready]", state="attached")
    assert page.locator(f"#ds-list tr[data-id='{long['id']}']").count() == 0
    assert page.is_hidden("#ds-job") and page.get_attribute("#jobs", "data-polling") == "off"
    assert httpx.get(f"{url}/datasets/{long['id']}").status_code == 404
    page.click(f"#ds-list tr[data-id='{job['id']}'] button:has-text('Delete')")
    page.wait_for_selector("#ds-empty:not([hidden])")
    assert "Deleted job" in page.inner_text("#ds-status") and httpx.get(f"{url}/datasets").json() == {
        "datasets": []
    }

    # Too large a set: the API's 422, naming the field and the limit.
    watch.allow(422)
    page.select_option("#ds-class", "")
    page.fill("#ds-rows", "200000")
    page.click("#ds-start")
    page.wait_for_selector("#errors p:has-text('/datasets')")
    assert page.inner_text("#errors") == (
        "POST /datasets → 422: per_class: the set would have 2000000 rows; at most 1000000 (GAN_MAX_DATASET_ROWS)"
    )
    assert page.get_attribute("#ds-rows", "aria-invalid") == "true"
    # An unconditional model's plan is n.
    page.select_option("#model", "grid25")
    page.wait_for_selector("#ds-rows-label:has-text('Rows in the set')")
    page.fill("#ds-rows", "2000000")
    page.click("#ds-start")
    page.wait_for_selector("#errors p:has-text('/datasets')")
    assert "422: n: the set would have 2000000 rows" in page.inner_text("#errors")


def test_api_errors_are_shown_as_the_api_words_them(watch: Watch, bundled_service: str) -> None:
    page = opened(watch, bundled_service)
    watch.allow(422)
    page.fill("#n", "5000")
    page.press("#n", "Enter")
    page.wait_for_selector("#errors p")
    assert page.inner_text("#errors") == "POST /generate → 422: n: n must be <= 1024 (GAN_MAX_N), got 5000"
    assert page.get_attribute("#n", "aria-invalid") == "true"
    assert page.locator("#grid .tile").count() == 16  # the last samples stay: never a blank page
    page.evaluate("window.scrollTo(0, 0)")
    watch.shot(page, "error")
    page.fill("#steps", "1")
    page.click("#interpolate")
    page.wait_for_selector("#errors p:has-text('/interpolate')")
    assert (
        page.inner_text("#errors")
        == "POST /interpolate → 422: steps: Input should be greater than or equal to 2"
    )
    assert page.get_attribute("#steps", "aria-invalid") == "true"


def test_a_wrong_api_key_is_refused_in_words_and_the_right_one_is_sent(watch: Watch, tmp_path: Path) -> None:
    with running_service({"GAN_API_KEY": KEY, "GAN_DATA_DIR": str(tmp_path)}) as (url, _):
        watch.allow(401)
        page = watch.page
        sent: list[str | None] = []
        page.on(
            "request", lambda r: sent.append(r.headers.get("authorization")) if "/models" in r.url else None
        )
        page.goto(f"{url}/")  # the page and its files load without a key
        page.wait_for_selector("#errors p")
        assert page.inner_text("#errors").startswith(
            "GET /models → 401: authorization: missing or unknown API key"
        )
        page.fill("#api-key", "wrong-key-0123456789")
        page.click("#key-apply")
        page.wait_for_function("document.querySelector('#errors p')?.textContent.includes('401')")
        assert sent[-1] == "Bearer wrong-key-0123456789"
        assert page.get_attribute("#api-key", "aria-invalid") == "true"
        watch.shot(page, "wrong-key")
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        page.wait_for_selector("#grid[data-state=ready] .tile img")
        assert sent[-1] == f"Bearer {KEY}" and page.inner_text("#errors") == ""
        # A dataset job with the key: started, watched and its shard downloaded (a plain link would get 401).
        page.wait_for_selector("#jobs[data-state=ready]:not([hidden])")
        page.select_option("#ds-class", "Bag")
        page.fill("#ds-rows", "2")
        job = job_started(page)
        page.wait_for_selector(f"#ds-job[data-id='{job['id']}'][data-state=done] #ds-shards a")
        with page.expect_download() as download:
            page.click("#ds-shards a")
        shard = httpx.get(f"{url}/datasets/{job['id']}/shards/0", headers={"X-API-Key": KEY})
        assert Path(download.value.path()).read_bytes() == shard.content and shard.headers["x-sha256"]
        stored = page.evaluate("[sessionStorage.length, localStorage.length, document.cookie]")
        assert stored == [1, 0, ""]  # session storage only
        page.reload()  # the same tab keeps it
        page.wait_for_selector("#grid[data-state=ready] .tile img")
        for path in ("/static/../models", "/static/%2e%2e/models"):  # sent as written: no key, no models
            status, body = raw_get(url, path)
            assert status in (401, 404) and b"fashion-cgan" not in body, (path, status)


def test_phone_width_labels_and_keyboard(browser: Browser, shots: Path, bundled_service: str) -> None:
    watch = Watch(browser, shots, viewport={"width": 390, "height": 844})
    try:
        page = opened(watch, bundled_service)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        unlabelled = page.evaluate(
            """[...document.querySelectorAll('input, select, button, textarea')]
                 .filter(e => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()))
                 .map(e => e.id || e.outerHTML)"""
        )
        assert unlabelled == []
        controls = page.eval_on_selector_all(
            "main input, main select, main button[id], header input, header button",
            "els => els.filter(e => e.offsetParent !== null).map(e => e.id)",
        )
        reached: set[str] = set()
        for _ in range(400):
            page.keyboard.press("Tab")
            reached.add(page.evaluate("document.activeElement.id"))
            if set(controls) <= reached:
                break
        assert set(controls) <= reached, set(controls) - reached
        page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
        watch.shot(page, "phone")
    finally:
        watch.context.close()
    watch.check()


def test_the_docs_render_with_the_network_off(watch: Watch, bundled_service: str) -> None:
    page = watch.page
    page.goto(f"{bundled_service}/docs")
    page.wait_for_selector(".swagger-ui .opblock")
    schema = httpx.get(f"{bundled_service}/openapi.json").json()
    operations = sum(len(ops) for ops in schema["paths"].values())
    assert page.locator(".opblock").count() == operations
    assert "GAN generator service" in page.inner_text(".info")
    assert httpx.get(f"{bundled_service}/redoc").status_code == 404  # not served: it would need a CDN
    watch.shot(page, "api-docs")


# --- the page's files and the gate ----------------------------------------------------------------------


def test_the_page_is_small_and_its_files_are_public_reads_only() -> None:
    own = [p for p in STATIC.rglob("*") if p.is_file() and "vendor" not in p.parts]
    size = sum(p.stat().st_size for p in own)
    print(f"playground: {len(own)} files, {size} bytes")
    assert size < PAGE_BUDGET
    settings = Settings(model_dir=ROOT / "models", api_key=KEY)
    with TestClient(create_app(settings)) as client:
        for path in (
            "/",
            "/static/js/app.js",
            "/static/style.css",
            "/static/vendor/swagger-ui/swagger-ui.css",
        ):
            assert client.get(path).status_code == 200, path
        assert client.head("/static/js/app.js").status_code == 200
        for method, path in (("POST", "/"), ("POST", "/static/js/app.js"), ("GET", "/docs"),
                             ("GET", "/models"), ("GET", "/openapi.json")):  # fmt: skip
            assert client.request(method, path).status_code == 401, (method, path)
        for path in ("/static/../models", "/static/%2e%2e/models", "/static/..%2fmodels"):
            response = client.get(path)  # the client resolves "..": /models, which needs the key
            assert response.status_code in (401, 404) and "fashion-cgan" not in response.text, path
        paths = client.get("/openapi.json", headers={"X-API-Key": KEY}).json()["paths"]
        assert not [p for p in paths if p in ("/", "/docs", "/redoc") or p.startswith("/static")]
