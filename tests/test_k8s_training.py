"""The multi-node training manifests (k8s/training/distributed/), proven as far as a machine without a cluster
allows: every variant renders with kustomize; Kubernetes' own kinds (the Indexed Job, its headless Service, the
ConfigMap, the volume) pass `kubernetes-validate --strict`; the PyTorchJob passes the schema of its own fields
(k8s/training/distributed/schema/, written from the training operator's Go types: no CRD file offline) and
its admission webhook's rules, and each of its pod templates passes `kubernetes-validate --strict` as a Pod.
The node script both variants run is run here too, as one node of two ranks, through training and export."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from service.manifest import load_manifest
from tests.support import ROOT, free_port
from tests.test_deploy import BIN, find, render, run

DISTRIBUTED = "k8s/training/distributed"
VARIANTS = ["indexed-job", "indexed-job-gpu", "pytorchjob", "pytorchjob-gpu"]
SCHEMA = json.loads((ROOT / DISTRIBUTED / "schema/pytorchjob-v1.json").read_text())
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def strict(docs: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    return run(BIN / "kubernetes-validate", "--strict", "--quiet", rendered)


def pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod specs a variant runs: the Job's template, or each PyTorchJob replica's."""
    if any(d["kind"] == "PyTorchJob" for d in docs):
        specs = find(docs, "PyTorchJob")["spec"]["pytorchReplicaSpecs"]
        return [specs[r]["template"]["spec"] for r in ("Master", "Worker")]
    return [find(docs, "Job")["spec"]["template"]["spec"]]


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_kubernetes_kinds_pass_kubernetes_validate_strict(variant: str, tmp_path: Path) -> None:
    docs = render(f"{DISTRIBUTED}/{variant}")
    native = [d for d in docs if d["kind"] != "PyTorchJob"]
    for doc in docs:
        if doc["kind"] == "PyTorchJob":  # its pod templates, as the Pods the operator makes of them
            for role, spec in doc["spec"]["pytorchReplicaSpecs"].items():
                template = spec["template"]
                metadata = {**template["metadata"], "name": f"{doc['metadata']['name']}-{role.lower()}-0"}
                native.append(
                    {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}
                )
    result = strict(native, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = copy.deepcopy(native)
    workload = broken[-1]["spec"]
    (workload.get("template", {}).get("spec") or workload)["containers"][0]["volumeMountz"] = []
    assert strict(broken, tmp_path).returncode == 1  # the check can fail


@pytest.mark.parametrize("variant", ["pytorchjob", "pytorchjob-gpu"])
def test_the_pytorchjob_passes_its_schema_and_the_operators_webhook(variant: str) -> None:
    job = find(render(f"{DISTRIBUTED}/{variant}"), "PyTorchJob")
    jsonschema.validate(job, SCHEMA)
    assert DNS_1035.fullmatch(job["metadata"]["name"])
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"} and specs["Master"]["replicas"] == 1
    for spec in specs.values():
        names = {c["name"]: c for c in spec["template"]["spec"]["containers"]}
        assert names["pytorch"]["image"] == "gan-serving:train"
        assert "RDZV_ENDPOINT" not in env(names["pytorch"])  # torchrun takes the operator's PET_* variables
    for path, value in ((("spec", "nprocPerNodes"), "1"), (("spec", "runPolicy", "cleanPodPolicy"), "Some")):
        broken = copy.deepcopy(job)
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA)


def test_the_indexed_job_meets_at_pod_zero_through_the_headless_service() -> None:
    docs = render(f"{DISTRIBUTED}/indexed-job")
    job, service = find(docs, "Job"), find(docs, "Service")
    pod = job["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    variables = env(container)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(variables["NNODES"])
    assert service["spec"]["clusterIP"] == "None" and pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    host, port = variables["RDZV_ENDPOINT"].split(":")
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_volumes_devices_and_the_script(variant: str) -> None:
    docs = render(f"{DISTRIBUTED}/{variant}")
    claim = find(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every node mounts the run directories
    script = find(docs, "ConfigMap")["data"]["train-ddp.sh"]
    assert script == (ROOT / DISTRIBUTED / "common/train-ddp.sh").read_text()
    gpu = variant.endswith("-gpu")
    for spec in pods(docs):
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in spec["volumes"]}
        assert claims["runs"] == claim["metadata"]["name"] and claims["models"] == "gan-models"
        (container,) = spec["containers"]
        assert container["command"] == ["sh", "/scripts/train-ddp.sh"]
        assert env(container)["TRAIN_ARGS"] == f"--set device={'cuda' if gpu else 'cpu'}"
        assert ("nvidia.com/gpu" in container["resources"]["limits"]) is gpu
        assert bool(spec.get("tolerations")) is gpu and bool(spec.get("nodeSelector")) is gpu
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_node_script_trains_on_two_ranks_and_exports(tmp_path: Path) -> None:
    """train-ddp.sh as node 0 of a one-node c10d rendezvous on 127.0.0.1 with two ranks: training, then the
    export and evaluation that node 0 does at the end; the model says it was trained by two gloo ranks."""
    variables = {
        "NAME": "ring", "PRESET": "toy2d", "STEPS": "3", "NNODES": "1", "NPROC_PER_NODE": "2",
        "RDZV_ENDPOINT": f"127.0.0.1:{free_port()}", "JOB_COMPLETION_INDEX": "0",
        "RUN_DIR": str(tmp_path / "run"), "MODEL_DIR": str(tmp_path / "models"),
        "TRAIN_ARGS": "--data ring8 --set g_width=8 --set d_width=8 --set batch_size=64",
        "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
    }  # fmt: skip
    result = subprocess.run(
        ["sh", str(ROOT / DISTRIBUTED / "common/train-ddp.sh")],
        cwd=ROOT, env={**os.environ, **variables}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = load_manifest(tmp_path / "models" / "ring" / "1" / "manifest.json")
    assert manifest.training.steps == 3
    assert [(s["world_size"], s["backend"]) for s in manifest.training.segments] == [(2, "gloo")]
    assert manifest.metrics  # evaluated
