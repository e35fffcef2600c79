"""The KServe manifests (k8s/kserve/), proven as far as a machine without a cluster allows.

Two ServingRuntimes (serving.kserve.io/v1alpha1: the image, its container and its scheduling) and two
InferenceServices (serving.kserve.io/v1beta1) whose predictor is `model: {modelFormat, runtime,
protocolVersion: v2}`. The authority is KServe's own CRDs: their OpenAPI v3 schemas, committed unmodified
under k8s/kserve/schema/ (source commit in each `$comment`), every manifest checked against its own.
jsonschema checks types, enums and required fields; a walk alongside the schema rejects every field the
schema does not declare (what the API server's strict field validation would refuse, and what its pruning
would silently drop otherwise) and duplicate keys in `x-kubernetes-list-type: map` lists. What KServe's
controller does with the pair is mirrored from its source at that commit: the runtime is found by name, must
list the model's format and protocol version and have a `kserve-container`, and the pod is the runtime's
container and pod fields with the InferenceService's pod fields on top. That pod is checked once more with
`kubernetes-validate --strict` (Kubernetes' own schemas) and held to k8s/base: the same image, ports, probes
(their /v2 equivalents, which exist in the app), resources, security and drain.
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
ISVC_TYPE = ("serving.kserve.io/v1beta1", "InferenceService")
RUNTIME_TYPE = ("serving.kserve.io/v1alpha1", "ServingRuntime")
SCHEMAS = {
    ISVC_TYPE: json.loads((KSERVE / "schema/inferenceservice-v1beta1.json").read_text()),
    RUNTIME_TYPE: json.loads((KSERVE / "schema/servingruntime-v1alpha1.json").read_text()),
}
ISVCS = {"cpu": KSERVE / "inferenceservice-cpu.yaml", "gpu": KSERVE / "inferenceservice-gpu.yaml"}
RUNTIMES = {"cpu": KSERVE / "servingruntime-cpu.yaml", "gpu": KSERVE / "servingruntime-gpu.yaml"}
RUNTIME_NAMES = {"cpu": "gan-serving-cpu", "gpu": "gan-serving-gpu"}
MODEL_FORMAT = "gan-onnx"
OVERLAYS = {"cpu": "k8s/overlays/cpu", "gpu": "k8s/overlays/gpu"}
GRPC_PORT = 8081
# the Deployment's probe paths and the Open Inference Protocol paths that answer the same
V2_PROBES = {"/healthz": "/v2/health/live", "/readyz": "/v2/health/ready"}
# KServe's admission webhook (pkg/apis/serving/v1beta1/inference_service_validation.go)
ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# PredictorSpec fields that are KServe's own (ComponentExtensionSpec, and the model), not the PodSpec's
KSERVE_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "deploymentStrategy", "model"}
# ModelSpec's own fields (pkg/apis/serving/v1beta1/predictor_model.go, predictor.go PredictorExtensionSpec);
# every other field of predictor.model is a corev1.Container field merged over the runtime's container
MODEL_FIELDS = {"modelFormat", "runtime", "storageUri", "runtimeVersion", "protocolVersion", "storage"}
MODEL_FIELDS |= {"confidential"}
# the ServingRuntime pod fields KServe copies into the predictor pod before the InferenceService's PodSpec
# fields go on top (pkg/controller/v1beta1/inferenceservice/utils/utils.go, MergePodSpec)
RUNTIME_POD_FIELDS = {"nodeSelector", "affinity", "tolerations", "volumes", "imagePullSecrets"}
RUNTIME_POD_FIELDS |= {"schedulerName", "resourceClaims"}
PREDICTOR_CONTAINER = "kserve-container"  # constants.InferenceServiceContainerName


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def manifests() -> list[dict[str, Any]]:
    return [load(p) for p in (*RUNTIMES.values(), *ISVCS.values())]


def runtime_container(runtime: dict[str, Any]) -> dict[str, Any]:
    (c,) = runtime["spec"]["containers"]
    assert c["name"] == PREDICTOR_CONTAINER
    return c


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"]}


# --- the validators ---------------------------------------------------------------------------------------


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


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """What the CRD schema of the document's own apiVersion and kind refuses: jsonschema, then the walk."""
    schema = SCHEMAS[(doc["apiVersion"], doc["kind"])]
    validator = jsonschema.Draft4Validator(schema)  # OpenAPI 3.0 schema objects: draft-4 semantics
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    return errors + undeclared(doc, schema)


# --- what KServe's controller and webhooks do with a predictor.model, mirrored ---------------------------


def supports_format(model: dict[str, Any], spec: dict[str, Any]) -> bool:
    """ModelSpec.RuntimeSupportsModel: with `runtime` named, every listed format counts; else autoSelect ones."""
    fmt = model["modelFormat"]
    wanted = f"mt:{fmt['name']}" + (f":{fmt['version']}" if "version" in fmt else "")
    offered: set[str] = set()
    for f in spec.get("supportedModelFormats", []):
        if model.get("runtime") is not None or f.get("autoSelect"):
            offered.add(f"mt:{f['name']}")
            if "version" in f:
                offered.add(f"mt:{f['name']}:{f['version']}")
    return wanted in offered


def supports_protocol(protocol: str | None, spec: dict[str, Any]) -> bool:
    """ServingRuntimeSpec.IsProtocolVersionSupported: a runtime listing none supports every protocol."""
    return not protocol or not spec.get("protocolVersions") or protocol in spec["protocolVersions"]


def runtimes_in(namespace: str, docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for d in docs
        if (d["apiVersion"], d["kind"]) == RUNTIME_TYPE and d["metadata"].get("namespace") == namespace
    }


def auto_selected(model: dict[str, Any], namespace: str, docs: list[dict[str, Any]]) -> list[str]:
    """ModelSpec.GetSupportingRuntimes for a model without `runtime` (single-model, single-node)."""
    protocol = model.get("protocolVersion", "v1")  # ModelSpec.GetProtocol: v1 when unset
    return [
        name
        for name, r in runtimes_in(namespace, docs).items()
        if not r["spec"].get("disabled")
        and not r["spec"].get("multiModel")
        and "workerSpec" not in r["spec"]
        and supports_format(model, r["spec"])
        and supports_protocol(protocol, r["spec"])
    ]


def binding_errors(isvc: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """What KServe refuses when it binds the predictor's model to a ServingRuntime among `docs`.

    The webhook (inference_service_validation.go: the model's container has no `name`, exactly one predictor
    implementation, no PYTHONPATH) and the controller (components/predictor.go reconcileModel and
    buildPodSpec), with KServe's messages. A ClusterServingRuntime of the name would also do; these manifests
    ship namespaced ones only.
    """
    predictor = isvc["spec"]["predictor"]
    model = predictor.get("model")
    if model is None:
        return ["spec.predictor.model: not set"]
    problems = []
    if "name" in model:
        problems.append("the 'name' field is not allowed in standard predictor")
    if predictor.get("containers"):
        problems.append("exactly one of [..., Model, ...] must be specified in PredictorSpec")
    name = model.get("runtime")
    if name is None:
        return [*problems, "spec.predictor.model.runtime: not set (these manifests name their runtime)"]
    runtime = runtimes_in(isvc["metadata"].get("namespace", ""), docs).get(name)
    if runtime is None:
        return [*problems, f"No ServingRuntimes or ClusterServingRuntimes with the name: {name}"]
    spec = runtime["spec"]
    if spec.get("disabled"):
        problems.append(f"specified runtime {name} is disabled")
    if not supports_protocol(model.get("protocolVersion"), spec):
        problems.append(f"specified runtime {name} does not support specified protocol version")
    if not supports_format(model, spec):
        problems.append(f"specified runtime {name} does not support specified framework/version")
    if PREDICTOR_CONTAINER not in [c["name"] for c in spec["containers"]]:
        problems.append(f"failed to find {PREDICTOR_CONTAINER} in ServingRuntime containers")
    for c in [*spec["containers"], model]:
        if "PYTHONPATH" in [e["name"] for e in c.get("env", [])]:
            problems.append("setting PYTHONPATH is not allowed for security reasons")
    return problems


def predictor_pod(isvc: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """The PodSpec KServe builds for the predictor (buildPodSpec, MergeServingRuntimeAndInferenceServiceSpecs).

    KServe merges strategically (the model's container fields over the runtime's kserve-container, the
    predictor's PodSpec fields over the runtime's pod fields); a plain update is the same merge for these
    manifests, whose two sides share no field (test_fields_are_where_kserve_takes_them). KServe's own
    additions (the env INFERENCE_SERVICE_NAME, labels, annotations) are left out.
    """
    definitions = importlib.resources.files("kubernetes_validate").joinpath(
        "kubernetes-json-schema/v1.37.0-local-strict/_definitions.json"
    )
    podspec = set(json.loads(definitions.read_text())["$defs"]["io.k8s.api.core.v1.PodSpec"]["properties"])
    predictor = isvc["spec"]["predictor"]
    assert set(predictor) - podspec <= KSERVE_FIELDS, set(predictor) - podspec
    model = predictor["model"]
    container = copy.deepcopy(runtime_container(runtime))
    container.update({k: copy.deepcopy(v) for k, v in model.items() if k not in MODEL_FIELDS})
    pod = {k: copy.deepcopy(v) for k, v in runtime["spec"].items() if k in RUNTIME_POD_FIELDS}
    pod.update({k: copy.deepcopy(v) for k, v in predictor.items() if k in podspec})
    pod["containers"] = [container]
    return pod


def as_pod(isvc: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    spec = predictor_pod(isvc, runtime)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": isvc["metadata"], "spec": spec}


def kubernetes_validate(doc: dict[str, Any], tmp_path: Path) -> int:
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(doc))
    return run(BIN / "kubernetes-validate", "--strict", "--quiet", path).returncode


# --- tests ------------------------------------------------------------------------------------------------


def test_the_schemas_are_kserves_crd_schemas() -> None:
    commits = set()
    for (_, kind), schema in SCHEMAS.items():
        (commit,) = re.findall(r"kserve/kserve commit ([0-9a-f]{40})\b", schema["$comment"])
        commits.add(commit)
        assert f"config/crd/full/serving.kserve.io_{kind.lower()}s.yaml" in schema["$comment"]
        jsonschema.Draft4Validator.check_schema(schema)
        assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert len(commits) == 1  # both from the same KServe commit
    predictor = SCHEMAS[ISVC_TYPE]["properties"]["spec"]["properties"]["predictor"]
    model = predictor["properties"]["model"]
    assert {"model", "minReplicas", "deploymentStrategy", "securityContext"} <= set(predictor["properties"])
    assert "protocolVersion" not in predictor["properties"]  # it belongs to the model
    assert {"modelFormat", "runtime", "protocolVersion", "storageUri"} <= set(model["properties"])
    assert model["properties"]["modelFormat"]["required"] == ["name"]
    assert "required" not in model  # storageUri is optional: the models are in the image
    runtime = SCHEMAS[RUNTIME_TYPE]["properties"]["spec"]
    assert runtime["required"] == ["containers"]
    assert {"supportedModelFormats", "protocolVersions", *RUNTIME_POD_FIELDS} <= set(runtime["properties"])
    # what a ServingRuntime has no field for, and the InferenceService therefore carries
    pod_only = {"securityContext", "terminationGracePeriodSeconds", "automountServiceAccountToken"}
    assert not pod_only & set(runtime["properties"])


@pytest.mark.parametrize("path", [*RUNTIMES.values(), *ISVCS.values()], ids=lambda p: p.name)
def test_manifest_passes_its_crd_schema_strictly(path: Path) -> None:
    doc = load(path)
    expected = RUNTIME_TYPE if path.name.startswith("servingruntime") else ISVC_TYPE
    assert (doc["apiVersion"], doc["kind"]) == expected
    assert schema_errors(doc) == []
    assert ISVC_NAME.fullmatch(doc["metadata"]["name"])


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_each_predictor_model_binds_to_its_runtime_with_v2(kind: str) -> None:
    isvc, runtime = load(ISVCS[kind]), load(RUNTIMES[kind])
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"] == RUNTIME_NAMES[kind]
    assert model["modelFormat"] == {"name": MODEL_FORMAT}
    assert "v2" in runtime["spec"]["protocolVersions"]
    assert MODEL_FORMAT in [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
    assert binding_errors(isvc, manifests()) == []
    # no storageUri (no storage initializer: the models are in the image), no runtimeVersion (it would
    # replace the image tag), no container overrides: the pod's container is exactly the runtime's
    assert set(model) == {"modelFormat", "runtime", "protocolVersion"}
    # KServe renders the runtime's container as a Go template of the InferenceService's metadata
    assert "{{" not in json.dumps(runtime_container(runtime))
    # no server type: KServe neither retags the image (-gpu) nor applies a server's defaults
    assert "serving.kserve.io/server-type" not in runtime["metadata"].get("annotations", {})


def test_only_the_cpu_runtime_is_auto_selected() -> None:
    docs = manifests()
    v2 = {"modelFormat": {"name": MODEL_FORMAT}, "protocolVersion": "v2"}
    assert auto_selected(v2, "gan-serving", docs) == [RUNTIME_NAMES["cpu"]]
    assert auto_selected({"modelFormat": {"name": MODEL_FORMAT}}, "gan-serving", docs) == []  # v1 assumed


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_predictor_pod_passes_kubernetes_validate_strict(kind: str, tmp_path: Path) -> None:
    assert kubernetes_validate(as_pod(load(ISVCS[kind]), load(RUNTIMES[kind])), tmp_path) == 0


def test_the_validators_can_fail(tmp_path: Path) -> None:
    isvc, runtime = load(ISVCS["cpu"]), load(RUNTIMES["cpu"])
    assert schema_errors(isvc) == schema_errors(runtime) == []

    misspelt = copy.deepcopy(runtime)  # jsonschema alone lets an unknown field through; the walk does not
    runtime_container(misspelt)["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    assert not list(jsonschema.Draft4Validator(SCHEMAS[RUNTIME_TYPE]).iter_errors(misspelt))
    assert schema_errors(misspelt) == [".spec.containers[0].readinessProbe.httpGett: not in the schema"]

    misplaced = copy.deepcopy(isvc)  # protocolVersion belongs to `predictor.model`, not to the predictor
    misplaced["spec"]["predictor"]["protocolVersion"] = "v2"
    assert schema_errors(misplaced) == [".spec.predictor.protocolVersion: not in the schema"]

    pod_field = copy.deepcopy(
        runtime
    )  # a ServingRuntime has no pod securityContext: the InferenceService has
    pod_field["spec"]["securityContext"] = {"runAsNonRoot": True}
    assert schema_errors(pod_field) == [".spec.securityContext: not in the schema"]

    wrong_type = copy.deepcopy(isvc)
    wrong_type["spec"]["predictor"]["minReplicas"] = "2"
    assert schema_errors(wrong_type) == ["spec.predictor.minReplicas: '2' is not of type 'integer'"]

    wrong_type = copy.deepcopy(runtime)
    wrong_type["spec"]["protocolVersions"] = "v2"
    assert schema_errors(wrong_type) == ["spec.protocolVersions: 'v2' is not of type 'array'"]

    duplicate = copy.deepcopy(
        runtime
    )  # ports are a list-map keyed by containerPort and protocol (default TCP)
    runtime_container(duplicate)["ports"][1] = {"name": "again", "containerPort": 8000}
    (problem,) = schema_errors(duplicate)
    assert problem.startswith(".spec.containers[0].ports: duplicate")

    bad_pod = as_pod(isvc, runtime)
    bad_pod["spec"]["securityContext"]["runAsUser"] = "10001"
    assert kubernetes_validate(bad_pod, tmp_path) == 1

    # the binding: schema-valid manifests that KServe would still not run
    docs = manifests()
    for change, expected in [
        (
            {"runtime": "gan-serving"},
            "No ServingRuntimes or ClusterServingRuntimes with the name: gan-serving",
        ),
        ({"modelFormat": {"name": "onnx"}}, "specified runtime gan-serving-cpu does not support specified "),
        ({"modelFormat": {"name": MODEL_FORMAT, "version": "1"}}, "does not support specified framework"),
        ({"protocolVersion": "v1"}, "specified runtime gan-serving-cpu does not support specified protocol"),
        ({"name": PREDICTOR_CONTAINER}, "the 'name' field is not allowed in standard predictor"),
    ]:
        broken = copy.deepcopy(isvc)
        broken["spec"]["predictor"]["model"].update(change)
        assert schema_errors(broken) == [], change
        (problem,) = binding_errors(broken, docs)
        assert expected in problem, (change, problem)
    elsewhere = copy.deepcopy(isvc)  # a runtime in another namespace is not found
    elsewhere["metadata"]["namespace"] = "default"
    assert binding_errors(elsewhere, docs) == [
        "No ServingRuntimes or ClusterServingRuntimes with the name: gan-serving-cpu"
    ]
    renamed = copy.deepcopy(runtime)
    runtime_container(renamed)["name"] = "server"
    assert binding_errors(isvc, [renamed]) == ["failed to find kserve-container in ServingRuntime containers"]


def test_fields_are_where_kserve_takes_them() -> None:
    """The container and the scheduling in the runtime; the pod fields it has no place for, and the scaling,
    in the InferenceService; no field on both sides (KServe would merge them, the runtime's underneath)."""
    for kind in ("cpu", "gpu"):
        isvc, runtime = load(ISVCS[kind]), load(RUNTIMES[kind])
        predictor = isvc["spec"]["predictor"]
        spec = runtime["spec"]
        assert set(spec) - {"supportedModelFormats", "protocolVersions", "containers"} <= RUNTIME_POD_FIELDS
        assert not set(spec) & set(predictor)
        assert "containers" not in predictor  # the model is the predictor's one implementation
        assert set(predictor) - KSERVE_FIELDS == {
            "securityContext",
            "terminationGracePeriodSeconds",
            "automountServiceAccountToken",
        }
        scheduling = {"nodeSelector", "tolerations"}
        assert (scheduling <= set(spec)) is (kind == "gpu") and not scheduling & set(predictor)


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_predictor_pod_follows_the_base_deployment(kind: str) -> None:
    """Image, ports, env, probes, resources, security, drain and scaling as k8s/base + the overlay."""
    isvc, runtime = load(ISVCS[kind]), load(RUNTIMES[kind])
    predictor = isvc["spec"]["predictor"]
    ours = predictor_pod(isvc, runtime)
    (c,) = ours["containers"]
    docs = render(OVERLAYS[kind])
    deployment = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (base,) = pod["containers"]
    assert c["name"] == PREDICTOR_CONTAINER and c["image"] == base["image"] == f"gan-serving:{kind}"
    assert c["imagePullPolicy"] == base["imagePullPolicy"]
    assert c["ports"][0] == base["ports"][0] == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    for key in ("securityContext", "resources", "lifecycle"):
        assert c[key] == base[key], key
    for key in ("securityContext", "terminationGracePeriodSeconds", "automountServiceAccountToken"):
        assert ours[key] == pod[key], key
    for key in ("nodeSelector", "tolerations"):
        assert ours.get(key) == pod.get(key), key
    assert ("nvidia.com/gpu" in c["resources"]["limits"]) is (kind == "gpu")
    if kind == "gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert predictor["deploymentStrategy"] == deployment["spec"]["strategy"]
    hpa = find(render("k8s/overlays/cpu"), "HorizontalPodAutoscaler")["spec"]
    (cpu,) = [m["resource"] for m in hpa["metrics"] if m["type"] == "Resource"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert predictor["scaleMetric"] == cpu["name"] == "cpu"
    assert predictor["scaleTarget"] == cpu["target"]["averageUtilization"]
    assert 1 <= predictor["scaleTarget"] <= 100  # KServe's webhook: a CPU target is a percentage
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        mine, theirs = copy.deepcopy(c[probe]), copy.deepcopy(base[probe])
        assert mine["httpGet"].pop("path") == V2_PROBES[theirs["httpGet"].pop("path")], probe
        assert mine == theirs, probe
    # /tmp and the dataset jobs' GAN_DATA_DIR as the base has them; the models are in the image
    assert c["volumeMounts"] == [m for m in base["volumeMounts"] if m["mountPath"] in ("/tmp", "/data")]
    assert ours["volumes"] == [v for v in pod["volumes"] if v["name"] in ("tmp", "data")]
    # the settings: the overlay's ConfigMap, but the models bundled in the image, and gRPC on
    config = find(docs, "ConfigMap")["data"]
    variables = env(c)
    settings = {k: v for k, v in variables.items() if k.startswith("GAN_")}
    assert settings == variables  # nothing but the service's own settings
    image_env = parse(DOCKERFILES[kind]).envs
    assert settings == config | {"GAN_MODEL_DIR": image_env["GAN_MODEL_DIR"], "GAN_GRPC_PORT": str(GRPC_PORT)}
    Settings.model_validate({k[4:].lower(): v for k, v in settings.items()})  # the service accepts them
    pause = float(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert ours["terminationGracePeriodSeconds"] > pause + float(settings["GAN_DRAIN_TIMEOUT_S"])


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_open_inference_protocol_over_http_and_grpc(kind: str) -> None:
    isvc, runtime = load(ISVCS[kind]), load(RUNTIMES[kind])
    c = runtime_container(runtime)
    variables = env(c)
    # the protocol is the model's protocolVersion, checked against the runtime's list; no PROTOCOL env
    assert isvc["spec"]["predictor"]["model"]["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert set(runtime["spec"]["protocolVersions"]) <= {"v2", "grpc-v2"}  # the image serves both, not v1
    assert "PROTOCOL" not in variables and "PYTHONPATH" not in variables  # PYTHONPATH: blocked by KServe
    # Two ports need the Standard (raw Deployment) mode: Knative allows one, named http1 or h2c.
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    # KServe's predictor Service takes its ports from the pod's first container: the runtime's, as merged
    (pod_container,) = predictor_pod(isvc, runtime)["containers"]
    http, grpc = pod_container["ports"]
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


def test_kustomization_renders_all_four_and_each_passes_its_schema(tmp_path: Path) -> None:
    result = run("kubectl", "kustomize", "k8s/kserve")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("InferenceService", "gan-service-cpu"),
        ("InferenceService", "gan-service-gpu"),
        ("ServingRuntime", "gan-serving-cpu"),
        ("ServingRuntime", "gan-serving-gpu"),
    ]
    for doc in docs:
        assert schema_errors(doc) == []
        assert doc["metadata"]["namespace"] == "gan-serving"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gan-serving"
    for isvc in [d for d in docs if d["kind"] == "InferenceService"]:
        assert binding_errors(isvc, docs) == [], isvc["metadata"]["name"]
    unbound = sorted(  # without their runtimes: not bound
        (d for d in docs if d["kind"] == "InferenceService"), key=lambda d: d["metadata"]["name"]
    )
    assert [binding_errors(d, unbound) for d in unbound] == [
        [f"No ServingRuntimes or ClusterServingRuntimes with the name: {RUNTIME_NAMES[k]}"]
        for k in ("cpu", "gpu")
    ]
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
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "ServingRuntime"]
    images = sorted(runtime_container(d)["image"] for d in rendered)
    assert images == ["registry.example.com/gan-serving:cpu", "registry.example.com/gan-serving:gpu"]
