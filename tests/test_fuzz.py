"""Fuzzing: schemathesis against the live OpenAPI schema of a real server, and proof that the fuzz can fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from tests.support import free_port, running_service, wait_until


def test_schemathesis_fuzzes_every_endpoint_of_a_real_server(tmp_path: Path) -> None:
    """At least 1,000 generated cases against the live OpenAPI schema: no 5xx, every response conforms.

    The only edit to the service's schema: the `model` fields (and the v2 paths' model names and versions) list
    the served names (plus one unknown), so most cases reach the model's own validation instead of stopping at 404;
    model control (with the admin key) may load and unload `ring8` only, so the service stays ready throughout. Checked: everything schemathesis
    has except `positive_data_acceptance`, which expects any schema-valid body to succeed, but a static schema
    cannot say which class names or z lengths a given model takes, or the GAN_* limits in force.
    """
    admin = (
        "fuzz-admin-key-0123456789"  # model control on: load and unload of the bundled models are fuzzed too
    )
    datasets = {  # dataset jobs: small, and on the test's own disk
        "GAN_DATA_DIR": str(tmp_path / "data"), "GAN_MAX_DATASET_ROWS": "64", "GAN_DATASET_DISK_BYTES": str(4 << 20),
    }  # fmt: skip
    with running_service({"GAN_MAX_N": "256", "GAN_ADMIN_KEY": admin} | datasets) as (url, process):
        schema = httpx.get(f"{url}/openapi.json").json()
        names = sorted(m["name"] for m in httpx.get(f"{url}/models").json()["models"])
        model_names = {"type": "string", "enum": [*names, "no-such-model"]}
        for body in (
            "GenerateRequest",
            "InterpolateRequest",
            "AugmentRequest",
            "EditRequest",
            "DatasetRequest",
        ):
            schema["components"]["schemas"][body]["properties"]["model"] = model_names
        (parameter,) = schema["paths"]["/models/{name}"]["get"]["parameters"]
        parameter["schema"] = model_names
        versions = sorted(
            {str(v["version"]) for m in httpx.get(f"{url}/models").json()["models"] for v in m["versions"]}
        )
        for path, operations in schema["paths"].items():  # the Open Inference Protocol's model paths
            for parameter in (p for op in operations.values() for p in op.get("parameters", [])):
                if path.startswith("/v2/repository/"):  # load and unload: one model, so the rest keep serving
                    parameter["schema"] = {"type": "string", "enum": ["ring8", "no-such-model"]}
                elif path.startswith("/v2/") and parameter["name"] == "model_name":
                    parameter["schema"] = model_names
                if path.startswith("/v2/") and parameter["name"] == "model_version":
                    parameter["schema"] = {"type": "string", "enum": [*versions, "0", "x"]}
        (tmp_path / "openapi.json").write_text(json.dumps(schema))
        report = tmp_path / "report.json"
        rss_before = psutil.Process(process.pid).memory_info().rss
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", str(tmp_path / "openapi.json"), "--url", url,
             "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", "150",
             "--seed", "20261122", "--workers", "1", "--no-color", "--generation-database", "none",
             "--request-timeout", "30", "-H", f"X-API-Key: {admin}", "--report", "json", "--report-json-path", str(report)],
            cwd=tmp_path, capture_output=True, text=True, timeout=540,
        )  # fmt: skip  # one worker: hypothesis parses its filters' lambdas with ast.parse, which CPython 3.11.7
        # does not make thread-safe; with two workers the coverage phase hit "SystemError: AST constructor recursion
        # depth mismatch" in 2 runs of 2 once the dataset routes were added
        alive = process.poll() is None and httpx.get(f"{url}/healthz").status_code == 200
        rss_after = psutil.Process(process.pid).memory_info().rss
    summary = json.loads(report.read_text())
    print(
        f"schemathesis: {summary['test_cases']} in {summary['running_time']:.1f} s; RSS {rss_before >> 20} -> {rss_after >> 20} MiB"
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert summary["failures"] == [] and summary["errors"] == []
    operations = sum(len(methods) for methods in schema["paths"].values())
    assert (
        len(schema["paths"]) == 25
    )  # 9 native, 9 Open Inference Protocol, 4 dataset jobs (with 6 operations)
    assert summary["operations"]["tested"] == operations == 27
    assert summary["test_cases"]["generated"] >= 1000
    assert alive


def test_schemathesis_finds_an_undocumented_server_error(tmp_path: Path) -> None:
    """The fuzz above can fail: an endpoint that answers 500 to some inputs is found."""
    code = (
        "import sys, uvicorn, json\n"
        "from fastapi import FastAPI\n"
        "app = FastAPI()\n"
        "@app.get('/half')\n"
        "async def half(x: int) -> dict[str, float]:\n"
        "    return {'half': 1 / (x - 3)}\n"
        "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), log_level='critical')\n"
    )
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", code, str(port)])
    try:
        wait_until(lambda: port_open(port), 30, "the server to listen")
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"http://127.0.0.1:{port}/openapi.json",
             "--checks", "not_a_server_error", "--max-examples", "200", "--seed", "1", "--no-color",
             "--generation-database", "none"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)
    assert result.returncode == 1 and "Server error" in result.stdout, result.stdout[-3000:]


def port_open(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
        return True
    except httpx.TransportError:
        return False
