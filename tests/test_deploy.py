"""Deployment files, proven as far as a machine without a Docker engine or a cluster allows.

compose-spec schema, `kubectl kustomize` + `kubernetes-validate --strict` for every overlay, `promtool`,
hadolint and structural checks of the Dockerfiles, the Grafana dashboard against the metrics the service
really exports, and a real Prometheus scraping a real service process.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from service.copy_models import copy_models
from service.main import create_app
from service.settings import Settings
from tests.support import ROOT, free_port, wait_until

BIN = Path(sys.executable).parent
OVERLAYS = ["k8s/overlays/cpu", "k8s/overlays/gpu", "k8s/training"]
DOCKERFILES = {
    "cpu": ROOT / "deploy/docker/service-cpu.Dockerfile",
    "gpu": ROOT / "deploy/docker/service-gpu.Dockerfile",
    "train": ROOT / "deploy/docker/train.Dockerfile",
}
# The fields of the Prometheus Operator's ServiceMonitor CRD that a scrape needs (kubernetes-validate has no
# schema for custom resources).
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": {"type": "object", "minProperties": 1}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port", "path"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
                "namespaceSelector": {"type": "object"},
            },
        },
    },
}


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True)


def render(overlay: str) -> list[dict[str, Any]]:
    result = run("kubectl", "kustomize", overlay)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def seconds(duration: str) -> float:
    value, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", duration).groups()  # type: ignore[union-attr]
    return float(value) * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def app_paths() -> set[str]:
    return set(create_app(Settings()).openapi()["paths"])


# --- docker-compose ---------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_passes_the_compose_spec_schema() -> None:
    result = run(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_schema_check_can_fail(tmp_path: Path) -> None:
    bad = compose()
    bad["services"]["service"]["stop_grace_period"] = {"seconds": 30}  # must be a string
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(bad))
    result = run(
        BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", tmp_path / "compose.yml"
    )
    assert result.returncode == 1


def test_compose_services_profiles_and_mounts() -> None:
    services = compose()["services"]
    assert "profiles" not in services["service"]  # the CPU service is the default
    assert services["service-gpu"]["profiles"] == ["gpu"]
    (device,) = services["service-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert services["service-gpu"]["environment"]["GAN_DEVICE"] == "cuda"
    assert services["train"]["profiles"] == ["train"]
    data_volumes: set[str] = set()
    for name in ("service", "service-gpu"):
        service = services[name]
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        assert "models:/models:ro" in service["volumes"]
        # dataset jobs write under GAN_DATA_DIR: a writable volume there, its own for each service
        data_dir = service["environment"]["GAN_DATA_DIR"]
        (data,) = [v.split(":")[0] for v in service["volumes"] if v.split(":")[1:] == [data_dir]]
        data_volumes.add(data)
        drain = float(service["environment"]["GAN_DRAIN_TIMEOUT_S"])
        assert seconds(service["stop_grace_period"]) > drain
        assert service["healthcheck"]["test"][-1] in app_paths()
    assert len(data_volumes) == 2  # the two services never share one SQLite state
    assert "models:/models" in services["train"]["volumes"]  # the volume the services read
    for service in services.values():  # every file mounted from the repository exists
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert {f"{name}:8000" for name in ("service", "service-gpu")} == set(targets)
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"] if v.startswith("./"))
    for pattern in scrape["rule_files"]:  # the rules the config loads are mounted where it looks for them
        folder = str(Path(pattern).parent)
        assert mounts.get(f"./deploy/prometheus/{folder}") == f"/etc/prometheus/{folder}", pattern


def test_prometheus_config_passes_promtool() -> None:
    result = run("promtool", "check", "config", "deploy/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# --- Dockerfiles ------------------------------------------------------------------------------------------


def parse(path: Path) -> DockerfileParser:
    parser = DockerfileParser(fileobj=io.BytesIO())  # in memory: the parser never writes the real file
    parser.content = path.read_text()
    return parser


def final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    stages = [i for i, ins in enumerate(parser.structure) if ins["instruction"] == "FROM"]
    return parser.structure[stages[-1] :]


def instruction(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [ins["value"] for ins in stage if ins["instruction"] == name]


def test_dockerfiles_pass_hadolint() -> None:
    config = ROOT / "deploy/docker/hadolint.yaml"
    result = run(BIN / "hadolint", "--no-color", "--config", config, *DOCKERFILES.values())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", ["cpu", "gpu", "train"])
def test_dockerfile_runs_as_non_root_and_copies_what_exists(kind: str) -> None:
    parser = parse(DOCKERFILES[kind])
    stage = final_stage(parser)
    (user,) = instruction(stage, "USER")
    assert user.split(":")[0] not in ("root", "0")
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip()[:1] not in "#"
    ]
    for value in instruction(parser.structure, "COPY"):
        if value.startswith("--from"):
            continue
        for source in value.split()[:-1]:
            assert (ROOT / source).exists(), f"{DOCKERFILES[kind].name}: COPY {source}: not in the repository"
            assert source not in ignored, f"{source} is excluded by .dockerignore"


def installed_extras(parser: DockerfileParser) -> set[str]:
    extras: set[str] = set()
    for value in instruction(parser.structure, "RUN"):
        for match in re.finditer(r"pip install \"\.\[([a-z,]+)\]\"", value):
            extras |= set(match.group(1).split(","))
    return extras


def test_service_images_install_their_runtime_extra_and_never_torch() -> None:
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for kind, extra in (("cpu", "cpu"), ("gpu", "gpu")):
        extras = installed_extras(parse(DOCKERFILES[kind]))
        assert extras == {extra, "grpc"}, f"{kind} image installs {extras}"  # exactly one runtime extra
        requirements = base + optional[extra] + optional["grpc"]
        assert not [r for r in requirements if re.match(r"torch\b", r)], requirements
        assert not [r for r in optional["grpc"] if r.startswith("onnxruntime")]  # never both runtimes
    assert "onnxruntime-gpu" in optional["gpu"][0] and optional["cpu"][0].startswith("onnxruntime>")
    assert installed_extras(parse(DOCKERFILES["train"])) == {"train", "cpu"}


def test_service_images_expose_http_and_grpc() -> None:
    """The gRPC port (GAN_GRPC_PORT in k8s/kserve) is exposed beside the HTTP port, and the image has grpcio."""
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"grpcio", "grpcio-health-checking", "tritonclient[grpc]"} <= {
        re.split(r"[<>=]", r)[0] for r in optional["grpc"]
    }
    for kind in ("cpu", "gpu"):
        parser = parse(DOCKERFILES[kind])
        (exposed,) = instruction(final_stage(parser), "EXPOSE")
        assert exposed.split() == [parser.envs["GAN_PORT"], "8081"], exposed
        assert "GAN_GRPC_PORT" not in parser.envs  # gRPC stays opt-in: compose and k8s/base serve HTTP only


def test_service_images_health_check_drain_and_device() -> None:
    paths = app_paths()
    for kind in ("cpu", "gpu"):
        parser = parse(DOCKERFILES[kind])
        stage = final_stage(parser)
        (healthcheck,) = instruction(stage, "HEALTHCHECK")
        assert '"service.healthcheck"' in healthcheck and "/healthz" in paths
        env = parser.envs
        assert env["GAN_HOST"] == "0.0.0.0" and env["GAN_MODEL_DIR"] == "/app/models"
        assert env["GAN_DEVICE"] == {"cpu": "cpu", "gpu": "cuda"}[kind]
        assert float(env["GAN_DRAIN_TIMEOUT_S"]) < seconds(
            compose()["services"]["service"]["stop_grace_period"]
        )
        assert instruction(stage, "STOPSIGNAL") == ["SIGTERM"]
    assert parse(DOCKERFILES["cpu"]).baseimage.startswith("python:3.11-slim")
    assert re.fullmatch(
        r"nvidia/cuda:13\.[\d.]+-cudnn-runtime-ubuntu[\d.]+", parse(DOCKERFILES["gpu"]).baseimage
    )


def test_healthcheck_module_against_a_live_and_a_dead_service(bundled_service: str) -> None:
    port = bundled_service.rsplit(":", 1)[1]
    env = {"GAN_PORT": port, "PATH": ""}
    live = subprocess.run([sys.executable, "-m", "service.healthcheck"], cwd=ROOT, env=env)
    ready = subprocess.run([sys.executable, "-m", "service.healthcheck", "/readyz"], cwd=ROOT, env=env)
    missing = subprocess.run(
        [sys.executable, "-m", "service.healthcheck", "/nope"], cwd=ROOT, env=env, capture_output=True
    )
    assert (live.returncode, ready.returncode, missing.returncode) == (0, 0, 1)
    dead = subprocess.run(  # nothing listens on a free port
        [sys.executable, "-m", "service.healthcheck"],
        cwd=ROOT,
        env={"GAN_PORT": str(free_port())},
        capture_output=True,
    )
    assert dead.returncode == 1


def test_copy_models_copies_missing_versions_whole_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "volume"
    (target / "ring8" / "2").mkdir(parents=True)
    (target / "ring8" / "2" / "manifest.json").write_text("mine")
    copied = copy_models(ROOT / "models", target)
    bundled = sorted(f"{p.parent.name}/{p.name}" for p in (ROOT / "models").glob("*/*") if p.is_dir())
    assert copied == [key for key in bundled if key != "ring8/2"]
    assert (target / "ring8" / "2" / "manifest.json").read_text() == "mine"
    for key in copied:
        for file in ("model.onnx", "manifest.json"):
            assert (target / key / file).read_bytes() == (ROOT / "models" / key / file).read_bytes()
    assert copy_models(ROOT / "models", target) == []  # idempotent
    assert not list(target.glob("*/.*"))  # no staging folder left behind


# --- Kubernetes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_passes_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    result = run(BIN / "kubernetes-validate", "--strict", "--quiet", rendered)
    assert result.returncode == 0, result.stdout + result.stderr
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)


def test_kubernetes_validate_strict_can_fail(tmp_path: Path) -> None:
    docs = render("k8s/overlays/cpu")
    find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    assert run(BIN / "kubernetes-validate", "--strict", "--quiet", rendered).returncode == 1
    monitor = find(docs, "ServiceMonitor")
    del monitor["spec"]["endpoints"][0]["port"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)


@pytest.mark.parametrize("overlay", ["k8s/overlays/cpu", "k8s/overlays/gpu"])
def test_deployment_probes_security_and_drain(overlay: str) -> None:
    docs = render(overlay)
    config = find(docs, "ConfigMap")["data"]
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["envFrom"][0]["configMapRef"]["name"] == find(docs, "ConfigMap")["metadata"]["name"]
    paths = app_paths()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {
        container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")
    } <= paths
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    for c in [*pod["initContainers"], container]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > pause + float(config["GAN_DRAIN_TIMEOUT_S"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[config["GAN_MODEL_DIR"]]["readOnly"] is True and "/tmp" in mounts
    data = mounts[
        config["GAN_DATA_DIR"]
    ]  # dataset jobs write there: a writable volume, larger than the budget
    assert not data.get("readOnly")
    (volume,) = [v for v in pod["volumes"] if v["name"] == data["name"]]
    budget = int(config.get("GAN_DATASET_DISK_BYTES", Settings.model_fields["dataset_disk_bytes"].default))
    size = volume["emptyDir"]["sizeLimit"]
    assert size.endswith("Gi") and int(size[:-2]) << 30 > budget
    Settings.model_validate(
        {key[4:].lower(): value for key, value in config.items()}
    )  # the service accepts it
    gpu = overlay.endswith("gpu")
    assert config["GAN_DEVICE"] == ("cuda" if gpu else "cpu")
    assert container["image"] == f"gan-serving:{'gpu' if gpu else 'cpu'}"
    assert ("nvidia.com/gpu" in container["resources"]["limits"]) is gpu
    assert bool(pod.get("tolerations")) is gpu and bool(pod.get("nodeSelector")) is gpu


def test_autoscaler_disruption_budget_and_network_policy() -> None:
    docs = render("k8s/overlays/cpu")
    deployment = find(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    metric = by_type["Pods"]["pods"]["metric"]["name"]
    adapter = yaml.safe_load((ROOT / "k8s/monitoring/prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert rule["name"]["as"] == metric and metric in rule["seriesQuery"]
    assert metric in exported_metric_names()
    for kind in ("PodDisruptionBudget", "NetworkPolicy", "Service", "ServiceMonitor"):
        selector = find(docs, kind)["spec"].get("selector") or find(docs, kind)["spec"]["podSelector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    policy = find(docs, "NetworkPolicy")["spec"]
    assert policy["egress"] == [] and "Egress" in policy["policyTypes"]
    job = find(render("k8s/training"), "Job")["spec"]["template"]["spec"]
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in job["volumes"]}
    service_claims = [v["persistentVolumeClaim"]["claimName"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]  # fmt: skip
    assert claims["models"] in service_claims
    assert "nvidia.com/gpu" in job["containers"][0]["resources"]["limits"]


# --- metrics: the dashboard and a real Prometheus ---------------------------------------------------------


def exported_metric_names() -> set[str]:
    from fastapi.testclient import TestClient

    with TestClient(create_app(Settings())) as client:
        text = client.get("/metrics").text
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(kind, [])
            names |= {name + suffix for suffix in suffixes}
    return names


def test_grafana_dashboard_queries_only_metrics_the_service_exports() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/gan-serving.json").read_text())
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    exported = exported_metric_names()
    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            used |= set(re.findall(r"\bgan_[a-z_]+", target["expr"]))
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for needed in ("images/s", "requests/s", "p99", "batch", "queue", "rejections", "provider"):
        assert needed in titles


def query(prometheus: str, expr: str) -> float | None:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5)
    response.raise_for_status()  # 503 "Service Unavailable" until Prometheus's storage is open
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_a_real_prometheus_scrapes_the_service_with_the_repository_config(bundled_service: str) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    url = bundled_service
    with tempfile.TemporaryDirectory() as scratch:
        # The repository's scrape config, only the target moved to the test's service.
        config["global"]["scrape_interval"] = "250ms"
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [url.removeprefix("http://")]
        config_file = Path(scratch) / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        prometheus = f"http://127.0.0.1:{free_port()}"
        process = subprocess.Popen(
            ["prometheus", f"--config.file={config_file}", f"--storage.tsdb.path={scratch}/data",
             f"--web.listen-address={prometheus.removeprefix('http://')}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            sizes = [1, 3, 5, 7]
            for i, n in enumerate(sizes):
                body = {"model": "ring8", "n": n, "seed": i, "format": "json"}
                assert httpx.post(f"{url}/generate", json=body, timeout=10).status_code == 200
            assert httpx.post(f"{url}/generate", json={"model": "ring8", "n": 0}).status_code == 422
            wanted = {
                'sum(gan_requests_total{endpoint="/generate",status="200",model="ring8"})': len(sizes),
                'sum(gan_requests_total{endpoint="/generate",status="422"})': 1,
                'sum(gan_samples_generated_total{model="ring8"})': sum(sizes),
                'sum(gan_batch_rows_sum{model="ring8"})': sum(sizes),
                'sum(gan_batch_rows_count{model="ring8"})': len(sizes),  # one request at a time: a batch each
                'sum(gan_batch_rows_bucket{model="ring8",le="4.0"})': 2,  # n = 1 and 3
                'up{job="gan-service"}': 1,
            }
            seen: dict[str, float | None] = {}

            def scraped() -> bool:
                nonlocal seen
                try:
                    seen = {expr: query(prometheus, expr) for expr in wanted}
                except (httpx.TransportError, httpx.HTTPStatusError):  # not up yet, or up and not ready
                    seen = {}
                return seen == wanted

            wait_until(scraped, 60, lambda: f"Prometheus to report {wanted}; it reports {seen}", interval=0.2)
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_every_setting_is_documented_with_its_default() -> None:
    """docs/DEPLOY.md's table lists every GAN_* setting the service reads, with the default it really has."""
    table = {}
    for line in (ROOT / "docs/DEPLOY.md").read_text().splitlines():
        match = re.match(r"\| `(GAN_[A-Z_]+)` \| (.+?) \|", line)
        if match:
            table[match.group(1)] = match.group(2)
    fields = Settings.model_fields
    assert set(table) == {f"GAN_{name.upper()}" for name in fields}
    for name, field in fields.items():
        default = field.default
        if isinstance(default, (int, float, str, bool)) and name not in ("model_dir",):
            shown = {str(default).lower() if isinstance(default, bool) else str(default)}
            if isinstance(default, float) and default.is_integer():
                shown.add(str(int(default)))
            cell = table[f"GAN_{name.upper()}"]
            assert any(f"`{s}`" in cell for s in shown), (name, default, cell)
