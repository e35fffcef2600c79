"""Faults, on a real `python -m service`: kill -9 under load with a supervisor that restarts it (a seeded
client under the project's retry policy loses nothing and gets the same bytes), and, while serving, a model
directory that becomes unreadable or vanishes, a model's folder that goes and comes back, and a version file
half-written (what serves keeps serving, a reload fails with the reason, the metrics show it, nothing serves
the half-written file)."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gan_client import Client, Retrier, RetryPolicy
from service import versions
from service.model_folders import VersionDir
from service.settings import Settings
from tests.support import ROOT, free_port, wait_until

ADMIN = "admin-key-0123456789"
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def obey_file_permissions() -> None:
    """Run in the child before exec: as root, drop the capabilities that read past file permissions, so the
    service meets an unreadable directory as any (non-root) service user does."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


class Supervisor:
    """Keeps one `python -m service` running on one port, restarting it whenever it dies (as a kubelet or
    systemd would)."""

    def __init__(self, env: dict[str, str], preexec: Callable[[], None] | None = None) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = os.environ | env | {"GAN_HOST": "127.0.0.1", "GAN_PORT": str(port)}
        self.preexec, self.restarts, self.stopping = preexec, 0, threading.Event()
        self.process = self.spawn()
        self.watcher = threading.Thread(target=self.watch, daemon=True)

    def spawn(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "service"]
        return subprocess.Popen(command, cwd=ROOT, env=self.env, preexec_fn=self.preexec)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def watch(self) -> None:
        while not self.stopping.wait(0.05):
            if self.process.poll() is not None:
                self.restarts += 1
                self.process = self.spawn()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    def close(self) -> None:
        self.stopping.set()
        if self.watcher.is_alive():
            self.watcher.join(timeout=5)
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def supervised(env: dict[str, str], preexec: Callable[[], None] | None = None) -> Iterator[Supervisor]:
    supervisor = Supervisor({"GAN_LOG_LEVEL": "warning"} | env, preexec)
    try:
        wait_until(supervisor.ready, 60, "the service ready")
        supervisor.watcher.start()
        yield supervisor
    finally:
        supervisor.close()


def one_model(tmp_path: Path, *names: str) -> Path:
    """A model directory holding copies of these bundled models (copies: the tests may break them)."""
    root = tmp_path / "models"
    for name in names:
        shutil.copytree(ROOT / "models" / name, root / name)
    return root


def test_kill_9_under_load_loses_no_seeded_request_and_gives_the_same_bytes(tmp_path: Path) -> None:
    seeds = list(range(160))
    got: dict[int, bytes] = {}
    retries: list[float] = []
    failures: list[BaseException] = []

    def sleep(seconds: float) -> None:
        retries.append(seconds)
        time.sleep(seconds)

    with supervised({"GAN_MODEL_DIR": str(one_model(tmp_path, "grid25"))}) as service:
        # The project's retry policy as it ships (RetryPolicy()), with a sleep that counts the retries.
        with Client(service.url, retrier=Retrier(RetryPolicy(), sleep=sleep), timeout_s=30) as client:

            def load(mine: list[int]) -> None:
                try:
                    for seed in mine:
                        got[seed] = client.generate("grid25", 64, seed=seed, format="npy").content
                except BaseException as error:  # reported by the assertion below
                    failures.append(error)

            threads = [threading.Thread(target=load, args=(seeds[i::4],), daemon=True) for i in range(4)]
            for thread in threads:
                thread.start()
            wait_until(lambda: len(got) >= 20 or bool(failures), 60, "20 answers before the kill")
            service.kill()  # SIGKILL with 4 clients sending: requests in flight die with the process
            wait_until(lambda: service.restarts == 1 and service.ready(), 60, "the supervisor's restart")
            for thread in threads:
                thread.join(timeout=120)
        assert not failures, failures
        assert sorted(got) == seeds  # every seeded request answered, after retries where it had to be
        assert retries, "no call was retried: the kill hit nothing"
        for seed in seeds:  # the same identity gives the same bytes, before the kill, across it, after it
            again = httpx.post(
                f"{service.url}/generate", json={"model": "grid25", "n": 64, "seed": seed, "format": "npy"}
            )
            assert again.content == got[seed], seed
    assert service.restarts == 1


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when there is none)."""
    total = 0.0
    for line in text.splitlines():
        found = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if found and all(f'{key}="{value}"' in found[1] for key, value in labels.items()):
            total += float(found[2])
    return total


class Probe:
    """What a client sees of the service during a fault: its samples, a reload, its metrics."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.body = {"model": "grid25", "n": 32, "seed": 5, "format": "npy"}

    def samples(self) -> httpx.Response:
        return httpx.post(f"{self.url}/generate", json=self.body, timeout=30)

    def reload(self) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        return httpx.post(f"{self.url}/v2/repository/models/grid25/load", headers=headers, timeout=30)

    def loads(self, outcome: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return metric(text, "gan_model_loads_total", model="grid25", outcome=outcome)

    def serving(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return metric(text, "gan_model_versions_loaded", model="grid25")


def test_an_unreadable_vanished_or_corrupted_model_directory_keeps_what_serves(tmp_path: Path) -> None:
    root = one_model(tmp_path, "grid25")
    graph = root / "grid25" / "3" / "model.onnx"
    whole = graph.read_bytes()
    env = {"GAN_MODEL_DIR": str(root), "GAN_ADMIN_KEY": ADMIN, "GAN_MODEL_POLL_S": "0.1"}
    preexec = obey_file_permissions if os.geteuid() == 0 else None
    with supervised(env, preexec) as service:
        probe = Probe(service.url)
        served = probe.samples().content
        away = root.with_name("away")
        faults: list[tuple[str, Callable[[], object], Callable[[], object], str]] = [
            ("unreadable", lambda: root.chmod(0), lambda: root.chmod(0o755), "Permission denied"),
            ("vanished", lambda: root.rename(away), lambda: away.rename(root), "No such file or directory"),
        ]
        for fault, make, repair, reason in faults:
            failed = probe.loads("failed")
            make()
            try:
                # the poll meets the fault: a failed load counted (GanModelVersionFailed), nothing unloaded
                wait_until(
                    lambda before=failed: probe.loads("failed") > before,
                    30,
                    f"the poll to meet the {fault} directory",
                )
                answer = probe.samples()
                assert answer.status_code == 200 and answer.content == served, fault
                reload = probe.reload()
                assert reload.status_code == 400, (fault, reload.text)
                assert "cannot read the model directory" in reload.text and reason in reload.text
                assert probe.serving() == 1
            finally:
                repair()
            assert probe.reload().status_code == 200  # readable again: the reload reads it (nothing changed)

        # One model's folder gone (a sync that deletes before it copies): unloaded; back: loaded again.
        folder, parked = root / "grid25", tmp_path / "grid25-parked"
        folder.rename(parked)
        wait_until(lambda: probe.samples().status_code == 404, 30, "the poll to unload the model gone")
        parked.rename(folder)
        wait_until(lambda: probe.samples().status_code == 200, 30, "the poll to load the model back")
        assert probe.samples().content == served

        # A version's file half-written (a copy in progress, a disk error): its sha256 is not the manifest's.
        failed = probe.loads("failed")
        graph.write_bytes(whole[: len(whole) // 2])
        wait_until(lambda: probe.loads("failed") > failed, 30, "the poll to try the half-written file")
        answer = probe.samples()
        assert answer.status_code == 200 and answer.content == served  # from the graph loaded before
        reload = probe.reload()
        assert reload.status_code == 400 and "version 3: sha256 of model.onnx is" in reload.text, reload.text
        assert "(serving: versions [3])" in reload.text
        # whole again: the poll loads it (a file that changed), and it serves the same bytes
        loaded = probe.loads("ok")
        graph.write_bytes(whole)
        wait_until(lambda: probe.loads("ok") > loaded, 30, "the poll to load the whole file again")
        assert probe.samples().content == served
        assert service.restarts == 0


def test_a_graph_rewritten_between_its_check_and_its_session_is_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sha256 is checked on one read of model.onnx and ONNX Runtime reads it again: a writer in between
    (here: ring8's graph, which has grid25's very signature) must fail the load, not serve unchecked bytes
    under grid25's identity."""
    root = one_model(tmp_path, "grid25")
    other = (ROOT / "models" / "ring8" / "2" / "model.onnx").read_bytes()
    real = versions.open_graph

    def rewritten_first(path: Path, settings: Settings) -> versions.SessionInfo:
        path.write_bytes(other)
        return real(path, settings)

    monkeypatch.setattr(versions, "open_graph", rewritten_first)
    found = VersionDir("grid25", 3, root / "grid25" / "3")
    loaded = versions.prepare_version(found, Settings(model_dir=root))
    assert isinstance(loaded, versions.FailedModel), "a graph whose bytes were never checked was prepared"
    assert "model.onnx changed while it was being loaded" in loaded.reason
