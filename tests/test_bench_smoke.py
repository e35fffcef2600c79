"""Every benchmark runs with tiny settings, so none of them rots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.load import main


def test_load_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "load.json"
    args = [
        "--start",
        "--model",
        "fashion-cgan",
        "--concurrency",
        "1",
        "4",
        "--duration",
        "0.5",
        "--max-requests",
        "20",
    ]
    assert main([*args, "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["concurrency"] for r in results] == [1, 4]
    assert all(r["ok"] > 0 and r["errors"] == 0 and r["images_per_s"] > 0 for r in results)
    assert "images/s" in capsys.readouterr().out


def test_load_benchmark_refuses_remote_targets() -> None:
    with pytest.raises(SystemExit):
        main(["--url", "http://10.0.0.1:8000", "--model", "x"])


def test_soak_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.soak import main as soak

    out = tmp_path / "soak.json"
    args = ["--minutes", "0.02", "--window", "0.4", "--concurrency", "2", "--max-requests", "30", "--n", "2"]
    assert soak([*args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["windows"]) == 3 and all(
        w["requests"] > 0 and w["rss_mib"] > 0 for w in result["windows"]
    )
    assert result["drift"]["errors"] == 0 and result["drift"]["requests"] > 0
    assert "drift" in capsys.readouterr().out
