"""The KServe InferenceServices (k8s/kserve/), proven as far as a machine without a cluster allows.

The authority is KServe's own CRD: its v1beta1 OpenAPI v3 schema, committed unmodified under
k8s/kserve/schema/ (source commit in its `$comment`). jsonschema checks types, enums and required fields; a
walk alongside the schema rejects every field the schema does not declare (what the API server's strict field
validation would refuse, and what its pruning would silently drop otherwise) and duplicate keys in
`x-kubernetes-list-type: map` lists. The predictor's pod fields are checked once more as a Pod by
`kubernetes-validate --strict` (Kubernetes' own schemas), and the manifests are held to k8s/base: the same
image, ports, probes (their /v2 equivalents, which exist in the app), resources, security and drain.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.support import ROOT
from tests.test_deploy import BIN, DOCKERFILES, app_paths, find, instruction, parse, render, run

KSERVE = ROOT / "k8s/kserve"
SCHEMA = json.loads((KSERVE / "schema/inferenceservice-v1beta1.json").read_text())
MANIFESTS = {"cpu": KSERVE / "inferenceservice-cpu.yaml", "gpu": KSERVE / "inferenceservice-gpu.yaml"}
OVERLAYS = {"cpu": "k8s/overlays/cpu", "gpu": "k8s/overlays/gpu"}
GRPC_PORT = 8081
# the Deployment's probe paths and the Open Inference Protocol paths that answer the same
V2_PROBES = {"/healthz": "/v2/health/live", "/readyz": "/v2/health/ready"}
# KServe's admission webhook (pkg/apis/serving/v1beta1/inference_service_validation.go, predictor_custom.go)
ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# PredictorSpec fields that are KServe's own (ComponentExtensionSpec), not the PodSpec's
KSERVE_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "deploymentStrategy"}


def load(kind: str) -> dict[str, Any]:
    return yaml.safe_load(MANIFESTS[kind].read_text())


def container(isvc: dict[str, Any]) -> dict[str, Any]:
    (c,) = isvc["spec"]["predictor"]["containers"]
    return c


def env(isvc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(isvc)["env"]}


# --- the validator ----------------------------------------------------------------------------------------


def undeclared(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every field of `value` that `schema` does not declare, and every duplicate key of a list-map.

    Kubernetes structural schemas never say `additionalProperties: false`: an object with `properties` and
    neither `additionalProperties` nor `x-kubernetes-preserve-unknown-fields` takes those fields and no other.
    The root's `metadata` (ObjectMeta, not described by a CRD) is left to kubernetes-validate.
    """
    problems: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        open_ = schema.get("x-kubernetes-preserve-unknown-fields") or extra is True or path == ".metadata"
        for key, item in value.items():
            if key in properties:
                problems += undeclared(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                problems += undeclared(item, extra, f"{path}.{key}")
            elif not open_:
                problems.append(f"{path}.{key}: not in the schema")
    elif isinstance(value, list) and "items" in schema:
        items = schema["items"]
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema["x-kubernetes-list-map-keys"]
            defaults = {k: items["properties"][k].get("default") for k in keys}
            seen = [tuple(entry.get(k, defaults[k]) for k in keys) for entry in value]
            problems += [
                f"{path}: duplicate {dict(zip(keys, s, strict=True))}"
                for s in {s for s in seen if seen.count(s) > 1}
            ]
        elif schema.get("x-kubernetes-list-type") == "set":
            dumped = [json.dumps(v, sort_keys=True) for v in value]
            problems += [f"{path}: duplicate {d}" for d in {d for d in dumped if dumped.count(d) > 1}]
        for i, item in enumerate(value):
            problems += undeclared(item, items, f"{path}[{i}]")
    return problems


def schema_errors(isvc: dict[str, Any]) -> list[str]:
    """What KServe's CRD schema refuses: jsonschema's errors, then the undeclared fields."""
    validator = jsonschema.Draft4Validator(SCHEMA)  # OpenAPI 3.0 schema objects: draft-4 semantics
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(isvc)]
    return errors + undeclared(isvc, SCHEMA)


def as_pod(isvc: dict[str, Any]) -> dict[str, Any]:
    """The predictor's PodSpec fields as a Pod, for Kubernetes' own schemas; KServe's own fields left out."""
    definitions = importlib.resources.files("kubernetes_validate").joinpath(
        "kubernetes-json-schema/v1.37.0-local-strict/_definitions.json"
    )
    podspec = set(json.loads(definitions.read_text())["$defs"]["io.k8s.api.core.v1.PodSpec"]["properties"])
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) - podspec <= KSERVE_FIELDS, set(predictor) - podspec
    spec = {k: v for k, v in predictor.items() if k in podspec}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": isvc["metadata"], "spec": spec}


def kubernetes_validate(doc: dict[str, Any], tmp_path: Path) -> int:
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(doc))
    return run(BIN / "kubernetes-validate", "--strict", "--quiet", path).returncode


# --- tests ------------------------------------------------------------------------------------------------


def test_the_schema_is_kserves_inferenceservice_v1beta1_schema() -> None:
    assert re.search(r"kserve/kserve commit [0-9a-f]{40}\b", SCHEMA["$comment"])
    assert "config/crd/full/serving.kserve.io_inferenceservices.yaml" in SCHEMA["$comment"]
    jsonschema.Draft4Validator.check_schema(SCHEMA)
    assert set(SCHEMA["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    predictor = SCHEMA["properties"]["spec"]["properties"]["predictor"]
    assert {"containers", "minReplicas", "deploymentStrategy"} <= set(predictor["properties"])
    assert "protocolVersion" not in predictor["properties"]  # a custom predictor says v2 in env PROTOCOL


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_manifest_passes_the_crd_schema_strictly(kind: str) -> None:
    isvc = load(kind)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert schema_errors(isvc) == []
    assert ISVC_NAME.fullmatch(isvc["metadata"]["name"])


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_predictor_pod_passes_kubernetes_validate_strict(kind: str, tmp_path: Path) -> None:
    assert kubernetes_validate(as_pod(load(kind)), tmp_path) == 0


def test_the_validators_can_fail(tmp_path: Path) -> None:
    isvc = load("cpu")
    assert schema_errors(isvc) == []

    misspelt = copy.deepcopy(isvc)  # jsonschema alone lets an unknown field through; the walk does not
    container(misspelt)["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    assert not list(jsonschema.Draft4Validator(SCHEMA).iter_errors(misspelt))
    assert schema_errors(misspelt) == [
        ".spec.predictor.containers[0].readinessProbe.httpGett: not in the schema"
    ]

    misplaced = copy.deepcopy(isvc)  # protocolVersion belongs to `predictor.model`, not to a custom predictor
    misplaced["spec"]["predictor"]["protocolVersion"] = "v2"
    assert schema_errors(misplaced) == [".spec.predictor.protocolVersion: not in the schema"]

    wrong_type = copy.deepcopy(isvc)
    wrong_type["spec"]["predictor"]["minReplicas"] = "2"
    assert schema_errors(wrong_type) == ["spec.predictor.minReplicas: '2' is not of type 'integer'"]

    duplicate = copy.deepcopy(isvc)  # ports are a list-map keyed by containerPort and protocol (default TCP)
    container(duplicate)["ports"][1] = {"name": "again", "containerPort": 8000}
    (problem,) = schema_errors(duplicate)
    assert problem.startswith(".spec.predictor.containers[0].ports: duplicate")

    bad_pod = as_pod(isvc)
    bad_pod["spec"]["securityContext"]["runAsUser"] = "10001"
    assert kubernetes_validate(bad_pod, tmp_path) == 1


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_manifest_follows_the_base_deployment(kind: str) -> None:
    """Image, ports, env, probes, resources, security, drain and scaling as k8s/base + the overlay."""
    isvc = load(kind)
    predictor = isvc["spec"]["predictor"]
    c = container(isvc)
    docs = render(OVERLAYS[kind])
    deployment = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (base,) = pod["containers"]
    assert c["name"] == "kserve-container" and c["image"] == base["image"] == f"gan-serving:{kind}"
    assert c["imagePullPolicy"] == base["imagePullPolicy"]
    assert c["ports"][0] == base["ports"][0] == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    for key in ("securityContext", "resources", "lifecycle"):
        assert c[key] == base[key], key
    for key in ("securityContext", "terminationGracePeriodSeconds", "automountServiceAccountToken"):
        assert predictor[key] == pod[key], key
    for key in ("nodeSelector", "tolerations"):
        assert predictor.get(key) == pod.get(key), key
    assert ("nvidia.com/gpu" in c["resources"]["limits"]) is (kind == "gpu")
    assert predictor["deploymentStrategy"] == deployment["spec"]["strategy"]
    hpa = find(render("k8s/overlays/cpu"), "HorizontalPodAutoscaler")["spec"]
    (cpu,) = [m["resource"] for m in hpa["metrics"] if m["type"] == "Resource"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert predictor["scaleMetric"] == cpu["name"] == "cpu"
    assert predictor["scaleTarget"] == cpu["target"]["averageUtilization"]
    assert 1 <= predictor["scaleTarget"] <= 100  # KServe's webhook: a CPU target is a percentage
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        ours, theirs = copy.deepcopy(c[probe]), copy.deepcopy(base[probe])
        assert ours["httpGet"].pop("path") == V2_PROBES[theirs["httpGet"].pop("path")], probe
        assert ours == theirs, probe
    assert c["volumeMounts"] == [m for m in base["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert predictor["volumes"] == [v for v in pod["volumes"] if v["name"] == "tmp"]
    # the settings: the overlay's ConfigMap, but the models bundled in the image, and gRPC on
    config = find(docs, "ConfigMap")["data"]
    settings = {k: v for k, v in env(isvc).items() if k.startswith("GAN_")}
    image_env = parse(DOCKERFILES[kind]).envs
    assert settings == config | {"GAN_MODEL_DIR": image_env["GAN_MODEL_DIR"], "GAN_GRPC_PORT": str(GRPC_PORT)}
    Settings.model_validate({k[4:].lower(): v for k, v in settings.items()})  # the service accepts them
    pause = float(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert predictor["terminationGracePeriodSeconds"] > pause + float(settings["GAN_DRAIN_TIMEOUT_S"])


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_open_inference_protocol_over_http_and_grpc(kind: str) -> None:
    isvc = load(kind)
    c = container(isvc)
    variables = env(isvc)
    assert variables["PROTOCOL"] == "v2"  # KServe's custom predictor: protocol from env PROTOCOL (v1 | v2)
    assert "PYTHONPATH" not in variables  # blocked by KServe's webhook
    # Two ports need the Standard (raw Deployment) mode: Knative allows one, named http1 or h2c.
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    http, grpc = c["ports"]
    assert http["containerPort"] == int(variables["GAN_PORT"])  # the first: the predictor Service's port 80
    assert grpc["containerPort"] == int(variables["GAN_GRPC_PORT"]) == GRPC_PORT
    assert "grpc" in grpc["name"]  # KServe gives such a port appProtocol kubernetes.io/h2c
    exposed = {
        p for value in instruction(parse(DOCKERFILES[kind]).structure, "EXPOSE") for p in value.split()
    }
    assert {str(http["containerPort"]), str(grpc["containerPort"])} <= exposed
    paths = app_paths()
    assert {"/v2/models/{model_name}/infer", *V2_PROBES.values()} <= paths
    assert {c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} <= paths
    assert variables["GAN_DEVICE"] == {"cpu": "cpu", "gpu": "cuda"}[kind]


def test_v2_probes_answer_as_the_native_ones_and_need_no_key() -> None:
    with TestClient(create_app(Settings(api_key="probe-test-key-0123456789"))) as client:
        for native, v2 in V2_PROBES.items():
            assert client.get(v2).status_code == client.get(native).status_code == 200, v2
        assert client.get("/v2/models/ring8").status_code == 401  # keys are on: the probes are exempt


def test_kustomization_renders_both_and_each_passes_the_schema(tmp_path: Path) -> None:
    result = run("kubectl", "kustomize", "k8s/kserve")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted(d["metadata"]["name"] for d in docs) == ["gan-service-cpu", "gan-service-gpu"]
    for doc in docs:
        assert schema_errors(doc) == []
        assert doc["metadata"]["namespace"] == "gan-serving"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gan-serving"
    # a registry overlay on top retargets both images and keeps their tags (kustomize finds CRD containers)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(KSERVE, overlay)],
                "images": [{"name": "gan-serving", "newName": "registry.example.com/gan-serving"}],
            }
        )
    )
    result = run("kubectl", "kustomize", overlay)
    assert result.returncode == 0, result.stderr
    images = sorted(container(d)["image"] for d in yaml.safe_load_all(result.stdout) if d)
    assert images == ["registry.example.com/gan-serving:cpu", "registry.example.com/gan-serving:gpu"]
