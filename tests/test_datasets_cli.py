"""Beyond one machine: the Indexed Job's code path (`python -m service.datasets write`, ONNX Runtime directly) for
JOB_COMPLETION_INDEX = 0..3 writes shards k, k+4, ... byte for byte as the service's job does; `metadata`
describes the set; k8s/datasets renders and validates like the other manifests."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.datasets.cli import main
from service.datasets.spec import JobSpec
from service.main import create_app
from service.model_folders import version_path
from tests.support import ROOT, asgi_client
from tests.test_datasets import MLCROISSANT, create, finished, settings

BIN = Path(sys.executable).parent
# 9 shards of the 8x8 digits: pods 0..3 write {0, 4, 8}, {1, 5}, {2, 6}, {3, 7}.
BODY = {"model": "digits", "per_class": {"1": 20, "4": 15, "9": 10}, "seed": 21, "shard_rows": 5}


def service_job(
    tmp_path: Path, model_dir: Path, body: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The service's job for `body`: its status, and its shards' bytes by file name."""

    async def run() -> tuple[dict[str, Any], dict[str, bytes]]:
        app = create_app(settings(tmp_path, model_dir))
        async with asgi_client(app) as client:
            status = await finished(client, (await create(client, body))["url"])
            files = {}
            for shard in status["shards"]:
                response = await client.get(shard["url"])
                files[response.headers["content-disposition"].split('"')[1]] = response.content
            return status, files

    return asyncio.run(run())


@pytest.mark.parametrize("fmt", ["webdataset", "parquet", "npz"])
def test_indexed_pods_write_the_services_shards_byte_for_byte(
    fmt: str, tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, expected = service_job(tmp_path, model_dir, BODY | {"format": fmt})
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(status["spec"]))  # the resolved spec: seed and version fixed
    out = tmp_path / "volume"
    written: dict[int, set[str]] = {}
    for index in range(4):
        before = set(os.listdir(out)) if out.exists() else set()
        if index < 3:  # in this process, as a test can watch it
            monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
            assert main(["write", "--spec", str(spec_file), "--out", str(out), "--count", "4",
                         "--model-dir", str(model_dir)]) == 0  # fmt: skip
        else:  # the pod's own command line
            env = os.environ | {"JOB_COMPLETION_INDEX": "3", "GAN_MODEL_DIR": str(model_dir)}
            result = subprocess.run(
                [sys.executable, "-m", "service.datasets", "write", "--spec", str(spec_file), "--out", str(out),
                 "--count", "4"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
            assert "pod 3 of 4" in result.stdout
        written[index] = set(os.listdir(out)) - before
    ext = {"webdataset": "tar", "parquet": "parquet", "npz": "npz"}[fmt]
    assert written == {i: {f"shard-{k:05d}.{ext}" for k in range(i, 9, 4)} for i in range(4)}
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == expected

    mtimes = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)}
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")  # a retried pod: its shards are there, whole, and kept
    assert (
        main(
            [
                "write",
                "--spec",
                str(spec_file),
                "--out",
                str(out),
                "--count",
                "4",
                "--model-dir",
                str(model_dir),
            ]
        )
        == 0
    )
    assert {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)} == mtimes


@MLCROISSANT
def test_metadata_of_the_volume_validates_with_the_shards_sha256s(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mlcroissant as mlc

    status, expected = service_job(tmp_path, model_dir, BODY | {"format": "parquet"})
    spec_file, out = tmp_path / "spec.json", tmp_path / "volume"
    spec_file.write_text(json.dumps(status["spec"]))
    base = ["--spec", str(spec_file), "--out", str(out), "--model-dir", str(model_dir)]
    assert main(["write", *base, "--count", "2", "--index", "0"]) == 0
    with pytest.raises(SystemExit, match="shards are not written yet"):
        main(["metadata", *base])
    assert main(["write", *base, "--count", "2", "--index", "1"]) == 0
    assert main(["metadata", *base, "--base-url", "https://example.org/sets/digits"]) == 0
    jsonld = json.loads((out / "croissant.json").read_text())
    mlc.Dataset(jsonld=jsonld)
    files = [d for d in jsonld["distribution"] if d["@type"] == "cr:FileObject"]
    assert [f["sha256"] for f in files] == [s["sha256"] for s in status["shards"]]
    assert [f["contentUrl"] for f in files] == [
        f"https://example.org/sets/digits/{n}" for n in sorted(expected)
    ]
    assert [hashlib.sha256(expected[f["name"]]).hexdigest() for f in files] == [f["sha256"] for f in files]
    assert jsonld["prov:wasGeneratedBy"]["generation"]["seed"] == 21


def test_a_spec_without_seed_or_version_is_refused(tmp_path: Path, model_dir: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({k: v for k, v in BODY.items() if k != "seed"} | {"version": 1}))
    with pytest.raises(SystemExit, match="needs 'seed' and 'version'"):
        main(["write", "--spec", str(spec), "--out", str(tmp_path / "out"), "--model-dir", str(model_dir)])
    spec.write_text(json.dumps(BODY | {"version": 1}))
    with pytest.raises(SystemExit, match=r"completion index must be in 0 \.\. 1"):
        main(["write", "--spec", str(spec), "--out", str(tmp_path / "out"), "--model-dir", str(model_dir),
              "--count", "2", "--index", "2"])  # fmt: skip


# --- k8s/datasets -----------------------------------------------------------------------------------------


def rendered() -> list[dict[str, Any]]:
    result = subprocess.run(
        ["kubectl", "kustomize", "k8s/datasets"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_dataset_manifests_pass_kubernetes_validate_strict(tmp_path: Path) -> None:
    (tmp_path / "rendered.yaml").write_text(yaml.safe_dump_all(rendered()))
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(tmp_path / "rendered.yaml")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_indexed_job_runs_the_cli_on_the_spec_and_the_services_models() -> None:
    docs = rendered()
    jobs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}
    (config,) = [d for d in docs if d["kind"] == "ConfigMap"]
    spec = JobSpec.model_validate_json(config["data"]["spec.json"])  # a resolved spec the CLI accepts
    assert (version_path(ROOT / "models", spec.model, spec.version) / "manifest.json").is_file()
    write, metadata = jobs["gan-dataset-fashion-cgan-seed7"], jobs["gan-dataset-fashion-cgan-seed7-metadata"]
    assert write["spec"]["completionMode"] == "Indexed"
    pods = write["spec"]["completions"]
    assert write["spec"]["parallelism"] == pods == 4
    for job, command in ((write, "write"), (metadata, "metadata")):
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", "service.datasets", command]
        args = dict(zip(container["args"][::2], container["args"][1::2], strict=True))
        assert args["--spec"] == "/spec/spec.json" and args["--out"] == "/datasets/fashion-cgan-seed7"
        if command == "write":
            assert int(args["--count"]) == pods  # pod k of --count writes k, k + count, ...
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        env = {e["name"]: e["value"] for e in container["env"]}
        assert mounts[env["GAN_MODEL_DIR"]]["readOnly"] is True and "/tmp" in mounts
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == "gan-models"
        assert volumes[mounts["/datasets"]["name"]]["persistentVolumeClaim"]["claimName"] == "gan-datasets"
        assert volumes[mounts["/spec"]["name"]]["configMap"]["name"] == config["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["image"] == "gan-serving:cpu"
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claims == {"gan-datasets"}  # gan-models belongs to k8s/base


def test_the_pods_command_line_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the manifest runs is what the CLI accepts (index from the environment, as Kubernetes sets it)."""
    from service.datasets.cli import parser

    docs = rendered()
    (write,) = [d for d in docs if d["kind"] == "Job" and d["spec"].get("completionMode") == "Indexed"]
    (container,) = write["spec"]["template"]["spec"]["containers"]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    args = parser().parse_args([*container["command"][3:], *container["args"]])
    assert (args.command, args.index, args.count) == ("write", 2, 4)
