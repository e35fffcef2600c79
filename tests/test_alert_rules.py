"""The alert rules: promtool accepts them, their unit tests pass, and those tests can fail.

Each alert has a case where it fires and one where it does not (`exp_alerts: []`); an alert whose expression is
replaced by one that never fires, or by one that always does, fails its tests. The rules use only metrics the
service exports, and the Prometheus Operator's copy in k8s/monitoring is the same rules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT
from tests.test_deploy import exported_metric_names

RULES = ROOT / "deploy/prometheus/rules/gan-serving.yml"
TESTS = ROOT / "deploy/prometheus/tests/gan-serving.test.yml"
ALERTS = [
    "GanHighErrorRate",
    "GanQueueSaturated",
    "GanHigh429Rate",
    "GanLatencyP99OverSLO",
    "GanNoReadyModel",
    "GanModelVersionFailed",
    "GanOutputDrift",
    "GanOutputDiversityOutOfBand",
    "GanDatasetJobsFailing",
    "GanServiceDown",
]


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_rules_pass_promtool_and_the_config_loads_them() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert [rule["alert"] for rule in rules()] == ALERTS
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    matched = [p for pattern in config["rule_files"] for p in (ROOT / "deploy/prometheus").glob(pattern)]
    assert matched == [RULES]


def test_the_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = [case for test in yaml.safe_load(TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for alert in ALERTS:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in mine), f"{alert}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{alert}: no case where it stays quiet"


@pytest.mark.parametrize("alert", ALERTS)
@pytest.mark.parametrize("expr", ["vector(1) > 2", "vector(1)"], ids=["never", "always"])
def test_the_unit_tests_fail_when_an_alert_is_broken(alert: str, expr: str, tmp_path: Path) -> None:
    groups = yaml.safe_load(RULES.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = expr
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(groups))
    (tmp_path / "tests").mkdir()
    shutil.copy(TESTS, tmp_path / "tests" / TESTS.name)
    result = promtool("test", "rules", f"tests/{TESTS.name}", cwd=tmp_path)
    assert result.returncode != 0, f"{alert} with expr {expr!r} still passes its tests"


def test_the_rules_use_only_exported_metrics() -> None:
    exported = exported_metric_names()
    used = {name for rule in rules() for name in re.findall(r"\bgan_[a-z_]+", rule["expr"])}
    assert used and used <= exported, used - exported


def test_the_operator_copy_is_the_same_rules() -> None:
    resource = yaml.safe_load((ROOT / "k8s/monitoring/prometheusrule.yaml").read_text())
    assert resource["kind"] == "PrometheusRule" and resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["spec"] == yaml.safe_load(RULES.read_text())


def test_the_queue_capacity_is_exported_as_soon_as_a_model_loads() -> None:
    """GanQueueSaturated divides by gan_queue_capacity_rows: it must be there before the first request."""
    from fastapi.testclient import TestClient

    from service.main import create_app
    from service.settings import Settings

    with TestClient(create_app(Settings(max_queue_rows=12345))) as client:
        lines = client.get("/metrics").text.splitlines()
    capacity = {line for line in lines if line.startswith("gan_queue_capacity_rows{")}
    assert capacity and all(line.endswith(" 12345.0") for line in capacity), capacity
