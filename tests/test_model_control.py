"""Model control (Triton's repository extension, service.control): a hot swap under load that fails nothing, a
version that fails to load changing nothing that serves, unload and load again, the directory poll, the admin
key; and the official clients (tritonclient http and grpc) against a real server."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from service.auth import ApiKeyError
from service.main import create_app
from service.model_folders import VersionDir
from service.settings import Settings
from service.versions import fingerprint
from tests.support import asgi_client, eventually, free_port, running_service

ADMIN = "admin-key-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AS_ADMIN_GRPC = {"authorization": f"Bearer {ADMIN}"}  # gRPC metadata keys are lower case
LOAD, UNLOAD, INDEX = (
    "/v2/repository/models/ring/load",
    "/v2/repository/models/ring/unload",
    "/v2/repository/index",
)


def repository(tmp_path: Path, model_dir: Path, versions: list[int]) -> Path:
    """A model directory holding `ring` at these versions (copies of the trained one, renumbered)."""
    root = tmp_path / "models"
    for version in versions:
        add_version(root, model_dir, version)
    return root


def add_version(root: Path, model_dir: Path, version: int) -> Path:
    target = root / "ring" / str(version)
    shutil.copytree(model_dir / "ring" / "1", target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps(manifest | {"version": version}))
    return target


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def run(scenario: Any) -> Any:
    return asyncio.run(scenario())


def test_hot_swap_under_load_fails_nothing(tmp_path: Path, model_dir: Path) -> None:
    """v2 is added and v1 removed on disk, then loaded while 8 clients keep requesting: every answer is a 200
    naming its version, every request sent after the load call returned is v2's, and v1 closes once free."""
    root = repository(tmp_path, model_dir, [1])
    answers: list[tuple[bool, int, str | None]] = []

    async def scenario() -> tuple[httpx.Response, str, Any]:
        app = create_app(Settings(model_dir=root, admin_key=ADMIN))
        async with asgi_client(app) as c:
            old = app.state.gan.repository.models["ring"][1]
            swapped = asyncio.Event()

            async def client(worker: int) -> None:
                after = 0
                for k in range(2000):  # bounded: stops 25 requests after the swap, or at 2000
                    sent_after = swapped.is_set()
                    body = {"model": "ring", "n": 4, "seed": worker * 10_000 + k, "format": "json"}
                    r = await c.post("/generate", json=body)
                    answers.append((sent_after, r.status_code, r.headers.get("x-model-version")))
                    after += sent_after
                    if after >= 25:
                        return

            workers = [asyncio.ensure_future(client(i)) for i in range(8)]
            await eventually(lambda: len(answers) >= 40, what="the load to run")
            add_version(root, model_dir, 2)
            shutil.rmtree(root / "ring" / "1")
            loaded = await c.post(LOAD, headers=AS_ADMIN)
            swapped.set()
            await asyncio.gather(*workers)
            await eventually(lambda: old.batcher._closed, what="v1's batcher to close once free")
            return loaded, (await c.get("/metrics")).text, old

    loaded, metrics, old = run(scenario)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json() == {"name": "ring", "versions": ["2"]}
    assert [a for a in answers if a[1] != 200] == []
    assert {a[2] for a in answers if not a[0]} >= {"1"}  # v1 served before the swap
    assert {a[2] for a in answers if a[0]} == {"2"}  # and nothing sent after it
    assert old.leases.count == 0
    assert metric(metrics, "gan_model_loads_total", model="ring", outcome="ok") == 2
    assert metric(metrics, "gan_model_unloads_total", model="ring") == 1
    assert metric(metrics, "gan_model_versions_loaded", model="ring") == 1
    assert metric(metrics, "gan_model_load_seconds_count", model="ring") == 2
    assert metric(metrics, "gan_model_info", model="ring", version="1", provider=old.provider,
                  sha256=old.manifest.onnx_sha256, status="ready") == 0  # fmt: skip


def test_a_version_that_fails_to_load_changes_nothing_that_serves(tmp_path: Path, model_dir: Path) -> None:
    root = repository(tmp_path, model_dir, [1])

    async def scenario() -> dict[str, Any]:
        app = create_app(Settings(model_dir=root, admin_key=ADMIN))
        async with asgi_client(app) as c:
            bad = add_version(root, model_dir, 2)
            (bad / "model.onnx").write_bytes(b"not a graph")
            new_version = await c.post(LOAD, headers=AS_ADMIN)
            after_new = await c.post("/generate", json={"model": "ring", "n": 2})
            shutil.rmtree(bad)
            # v1's own files replaced by a broken graph: v1 keeps serving from what it loaded
            (root / "ring" / "1" / "model.onnx").write_bytes(b"broken too")
            replaced = await c.post(LOAD, headers=AS_ADMIN)
            after_replaced = await c.post("/generate", json={"model": "ring", "n": 2})
            index = await c.post(INDEX, headers=AS_ADMIN)
            return {"new": new_version, "after_new": after_new, "replaced": replaced,
                    "after_replaced": after_replaced, "index": index}  # fmt: skip

    got = run(scenario)
    assert got["new"].status_code == 400
    assert re.search(
        r"version 2: sha256 of model.onnx .*\(serving: versions \[1\]\)", got["new"].json()["error"]
    )
    assert got["after_new"].status_code == 200 and got["after_new"].headers["x-model-version"] == "1"
    assert got["replaced"].status_code == 400 and "version 1: sha256" in got["replaced"].json()["error"]
    assert (
        got["after_replaced"].status_code == 200 and got["after_replaced"].headers["x-model-version"] == "1"
    )
    assert got["index"].json() == [{"name": "ring", "version": "1", "state": "READY", "reason": ""}]


def test_unload_then_load_again(tmp_path: Path, model_dir: Path) -> None:
    root = repository(tmp_path, model_dir, [1, 2])

    async def scenario() -> list[httpx.Response]:
        app = create_app(Settings(model_dir=root, admin_key=ADMIN))
        async with asgi_client(app) as c:
            return [
                await c.post(UNLOAD, headers=AS_ADMIN),
                await c.post("/generate", json={"model": "ring"}),
                await c.post("/v2/models/ring/ready"),
                await c.post(INDEX, headers=AS_ADMIN, json={"ready": False}),
                await c.post(UNLOAD, headers=AS_ADMIN),
                await c.post(LOAD, headers=AS_ADMIN, json={}),
                await c.post("/generate", json={"model": "ring"}),
                await c.post(INDEX, headers=AS_ADMIN, json={"ready": True}),
                await c.post(LOAD, headers=AS_ADMIN, json={"parameters": {"config": "{}"}}),
                await c.post(INDEX, headers=AS_ADMIN, json={"ready": "maybe"}),
                await c.post("/v2/repository/models/nothing/load", headers=AS_ADMIN),
            ]

    (unloaded, gone, v2_gone, index, again, load, back, ready, config, bad_index, unknown) = run(scenario)
    assert unloaded.status_code == 200 and unloaded.json() == {"name": "ring", "versions": []}
    assert gone.status_code == 404 and v2_gone.status_code in (404, 405)
    assert index.json() == [{"name": "ring", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}]
    assert again.status_code == 404 and "not loaded" in again.json()["error"]
    assert load.json() == {"name": "ring", "versions": ["1", "2"]}
    assert back.status_code == 200 and back.headers["x-model-version"] == "2"
    assert [row["version"] for row in ready.json()] == ["1", "2"]
    assert config.status_code == 400 and config.json()["error"].startswith("parameters.config: not supported")
    assert bad_index.status_code == 400 and bad_index.json()["error"].startswith("ready:")
    assert unknown.status_code == 400 and "no version folder" in unknown.json()["error"]


def test_the_poll_loads_new_versions_and_unloads_what_is_gone(tmp_path: Path, model_dir: Path) -> None:
    root = repository(tmp_path, model_dir, [1])

    async def version_served(c: httpx.AsyncClient) -> str:
        r = await c.post("/generate", json={"model": "ring"})
        return r.headers.get("x-model-version", str(r.status_code))

    async def scenario() -> list[str]:
        app = create_app(Settings(model_dir=root, model_poll_s=0.05))  # no admin key: the poll needs none
        async with asgi_client(app) as c:
            seen = [await version_served(c)]
            add_version(root, model_dir, 2)
            await eventually(lambda: _is(version_served(c), "2"), seconds=30, what="the poll to load v2")
            seen.append(await version_served(c))
            shutil.rmtree(root / "ring")
            await eventually(
                lambda: _is(version_served(c), "404"), seconds=30, what="the poll to unload ring"
            )
            seen.append(await version_served(c))
            return seen

    assert run(scenario) == ["1", "2", "404"]


async def _is(served: Any, expected: str) -> bool:
    return bool(await served == expected)


def test_control_needs_its_own_key(tmp_path: Path, model_dir: Path) -> None:
    root = repository(tmp_path, model_dir, [1])
    user = "user-key-0123456789"

    async def answers(settings: Settings, headers: dict[str, str]) -> list[int]:
        async with asgi_client(create_app(settings)) as c:
            return [(await c.post(path, headers=headers)).status_code for path in (INDEX, LOAD, UNLOAD)]

    off = Settings(model_dir=root)
    on = Settings(model_dir=root, admin_key=ADMIN, api_key=user)
    assert run(lambda: answers(off, AS_ADMIN)) == [403, 403, 403]
    assert run(lambda: answers(on, {"Authorization": f"Bearer {user}"})) == [401, 401, 401]
    assert run(lambda: answers(on, {})) == [401, 401, 401]
    assert run(lambda: answers(on, {"X-API-Key": ADMIN})) == [200, 200, 200]
    with pytest.raises(ApiKeyError, match="a key of its own"):
        create_app(Settings(model_dir=root, admin_key=ADMIN, api_key=ADMIN))
    with pytest.raises(ApiKeyError, match="at least 16"):
        create_app(Settings(model_dir=root, admin_key="short"))


def test_the_official_clients_control_a_real_server(tmp_path: Path, model_dir: Path) -> None:
    root = repository(tmp_path, model_dir, [1])
    port = free_port()
    env = {"GAN_MODEL_DIR": str(root), "GAN_GRPC_PORT": str(port), "GAN_ADMIN_KEY": ADMIN}
    with running_service(env) as (url, _):
        http = triton_http.InferenceServerClient(url.removeprefix("http://"))
        grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        with pytest.raises(InferenceServerException, match="admin key"):
            http.load_model("ring")
        with pytest.raises(InferenceServerException, match="admin key"):
            grpc.unload_model("ring")
        add_version(root, model_dir, 2)
        http.load_model("ring", headers=AS_ADMIN)
        assert http.get_model_metadata("ring")["versions"] == ["1", "2"]
        index = grpc.get_model_repository_index(headers=AS_ADMIN_GRPC, as_json=True)["models"]
        assert [(m["name"], m["version"], m["state"]) for m in index] == [
            ("ring", "1", "READY"),
            ("ring", "2", "READY"),
        ]
        grpc.unload_model("ring", headers=AS_ADMIN_GRPC)
        assert not http.is_model_ready("ring")
        grpc.load_model("ring", headers=AS_ADMIN_GRPC)
        assert grpc.is_model_ready("ring", "2")
        with pytest.raises(InferenceServerException, match="no version folder"):
            grpc.load_model("missing", headers=AS_ADMIN_GRPC)
        grpc.close()
        http.close()


def test_only_what_a_version_reads_marks_it_changed(tmp_path: Path, model_dir: Path) -> None:
    target = add_version(tmp_path / "models", model_dir, 1)
    found = VersionDir("ring", 1, target)
    mark = fingerprint(found)
    (target / "contours.png").write_bytes(b"a figure beside the model, never read by the service")
    (target / "notes.txt").write_text("nor this")
    assert fingerprint(found) == mark
    (target / "encoder.onnx").write_bytes(b"an encoder graph: read when the manifest names one")
    assert fingerprint(found) != mark
    mark = fingerprint(found)
    onnx = (target / "model.onnx").read_bytes()
    (target / "model.onnx").write_bytes(onnx + b"\0")
    assert fingerprint(found) != mark
    mark = fingerprint(found)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps(manifest | {"description": "changed"}))
    assert fingerprint(found) != mark
