"""Every benchmark runs with tiny settings, so none of them rots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.load import main
from tests.support import ROOT, add_encoder


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


def test_raw_ort_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.raw_ort import graph_flops
    from bench.raw_ort import main as raw_ort

    out = tmp_path / "raw.json"
    args = ["--models", "ring8", "fashion-cgan", "--threads", "1", "--batches", "1", "4", "--seconds", "0.05",
            "--gemm-size", "128", "--json", str(out)]  # fmt: skip
    assert raw_ort(args) == 0
    report = json.loads(out.read_text())
    assert [m["model"] for m in report["models"]] == ["fashion-cgan", "ring8"]
    assert report["gemm"]["1"]["peak_gflops"] > 0
    for model in report["models"]:
        assert [r["batch"] for r in model["rows"]] == [1, 4]
        assert all(r["images_per_s"] > 0 and r["share_of_peak"] > 0 for r in model["rows"])
    assert "MFLOP/image" in capsys.readouterr().out
    # FLOPs counted from the graph match the architecture: ring8's G is a mixture of 8 affine generators,
    # each z[1:] (31) -> 2, all computed for every sample (one batched MatMul).
    ring = graph_flops(ROOT / "models/ring8/2/model.onnx")
    assert ring["total"] == 2 * 8 * (31 * 2)


def test_serve_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.report import main as report
    from bench.serve import main as serve

    out = tmp_path / "serve.json"
    args = ["--concurrency", "1", "2", "--ns", "1", "--formats", "npy", "--duration", "0.3",
            "--max-requests", "40", "--raw-seconds", "0.05", "--json", str(out), "--plots", str(tmp_path)]  # fmt: skip
    assert serve(args) == 0
    result = json.loads(out.read_text())
    servers = {p["server"] for p in result["points"]}
    assert servers == {"service", "service, untuned settings", "service, no batching", "naive FastAPI + ORT",
                       "bare ASGI (HTTP only)"}  # fmt: skip
    assert all(p["errors"] == 0 and p["images_per_s"] > 0 for p in result["points"])
    service = [p for p in result["points"] if p["server"] == "service"]
    assert all(p["ratio_to_raw"] > 0 and p["mean_batch_rows"] >= 1 for p in service)
    assert result["low_load"]["ort_ms"] > 0 and len(result["gains"]) == 2
    assert (tmp_path / "throughput-vs-concurrency.png").stat().st_size > 1000
    assert (tmp_path / "latency-distribution.png").stat().st_size > 1000
    capsys.readouterr()
    assert report(["--serve", str(out)]) == 0
    assert "| service |" in capsys.readouterr().out


def test_train_throughput_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.train_throughput import main as train

    out = tmp_path / "train.json"
    assert (
        train(["--presets", "toy2d", "--steps", "4", "--warmup", "2", "--threads", "1", "--json", str(out)])
        == 0
    )
    (row,) = json.loads(out.read_text())["rows"]
    assert row["preset"] == "toy2d" and min(row["plain_fp32"], row["ours_fp32"], row["ours_auto"]) > 0
    assert "speed-up" in capsys.readouterr().out


def test_train_scaling_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.train_scaling import main as scaling

    out = tmp_path / "scaling.json"
    args = [
        "--ranks",
        "1",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--repeats",
        "2",
        "--sizes",
        "8",
    ]
    assert scaling([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["ranks"] for r in report["ranks"]] == [1] and report["ranks"][0]["images_per_s"] > 0
    assert report["comm"]["allreduce_ms_per_step"] > 0 and [r["size"] for r in report["sizes"]] == [8]
    assert "capacity model" in capsys.readouterr().out


def test_tracing_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.tracing import main as tracing

    out = tmp_path / "tracing.json"
    args = ["--rounds", "1", "--duration", "0.3", "--max-requests", "10", "--concurrency", "1"]
    assert tracing([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["config"] for r in report["rows"]] == ["off", "tracing", "tracing 10%", "access log"]
    assert all(r["requests_per_s"] > 0 for r in report["rows"]) and report["exports"]
    assert "OTLP exports" in capsys.readouterr().out


def test_edit_benchmark_smoke(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.edit import main as edit

    shutil.copytree(model_dir / "digits", tmp_path / "models" / "digits")
    add_encoder(tmp_path / "models" / "digits" / "1")
    out = tmp_path / "edit.json"
    args = ["--model", "digits", "--model-dir", str(tmp_path / "models"), "--images", "1", "3", "--concurrency",
            "2", "--duration", "0.3", "--max-requests", "20", "--raw-seconds", "0.05", "--json", str(out)]  # fmt: skip
    assert edit(args) == 0
    report = json.loads(out.read_text())
    assert [p["images"] for p in report["points"]] == [1, 3]
    assert all(
        p["errors"] == 0 and p["ratio_to_raw"] > 0 and p["raw_images_per_s"] > 0 for p in report["points"]
    )
    assert "/edit digits images=3" in capsys.readouterr().out


def test_protocols_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.protocols import PROTOCOLS
    from bench.protocols import main as protocols

    out = tmp_path / "protocols.json"
    args = ["--ns", "2", "--concurrency", "1", "--duration", "0.2", "--max-requests", "10", "--raw-seconds", "0.05",
            "--json", str(out)]  # fmt: skip
    assert protocols(args) == 0
    report = json.loads(out.read_text())
    assert [p["protocol"] for p in report["points"]] == list(PROTOCOLS)
    assert report["raw_ort"]["2"] > 0 and report["inputs"] == "seed" and report["datatype"] == "UINT8"
    for p in report["points"]:
        assert p["n"] == 2 and p["errors"] == 0 and p["images_per_s"] > 0
        assert p["ratio_to_raw"] > 0 and p["ratio_to_native"] > 0
    assert "÷ native" in capsys.readouterr().out


def test_png_provenance_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.png_provenance import main as png_provenance

    out = tmp_path / "png.json"
    args = ["--images", "5", "--rounds", "2", "--n", "2", "--service-rounds", "1", "--json", str(out)]
    assert png_provenance(args) == 0
    report = json.loads(out.read_text())
    assert [r["image"] for r in report["encoding"]] == ["28x28x1", "28x28x3"]
    assert [r["model"] for r in report["service"]] == ["fashion-cgan", "stacked-mnist"]
    for r in report["encoding"] + report["service"]:
        assert min(r["without_wall_us"], r["with_wall_us"], r["cpu_ratio"], r["wall_ratio"]) > 0
    assert all(r["with_bytes"] > r["without_bytes"] for r in report["encoding"])
    assert "CPU ratio" in capsys.readouterr().out


def test_datasets_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.datasets import main as datasets

    out = tmp_path / "datasets.json"
    args = ["--model", "mnist-gan", "--rows", "64", "--shard-rows", "32", "--formats", "npz", "webdataset",
            "--duration", "0.3", "--repeats", "1", "--job-repeats", "2", "--raw-seconds", "0.05", "--max-requests", "20",
            "--json", str(out)]  # fmt: skip
    assert datasets(args) == 0
    report = json.loads(out.read_text())
    assert report["raw_ort_rows_per_s"] > 0 and report["raw_ort_rows_per_s_at_job_nice"] > 0
    assert [(j["format"], j["repeat"]) for j in report["jobs"]] == [
        ("npz", 0), ("webdataset", 0), ("npz", 1), ("webdataset", 1)
    ]  # fmt: skip
    assert all(j["rows"] == 64 and j["shards"] == 2 and j["ratio_to_raw"] > 0 for j in report["jobs"])
    assert len(report["raw_ort_rows_per_s_measurements"]) == 5  # one before the first job, one after each
    for fmt, summary in report["formats"].items():
        ratios = [j["ratio_to_raw"] for j in report["jobs"] if j["format"] == fmt]
        assert summary["ratios_to_raw"] == ratios and min(ratios) <= summary["ratio_to_raw_median"] <= max(
            ratios
        )
    latency = report["latency"]
    assert latency["idle"][0]["ok"] > 0 and latency["during_job"][0]["ok"] > 0 and latency["p99_ratio"] > 0
    assert "x raw" in capsys.readouterr().out


def test_gpu_check_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bench.gpu_check on the CPU, tiny: training, export, node placement, the served sweep, batch invariance
    and the memory soak all run (buckets and IOBinding forced on); only CUDA itself is left out."""
    from bench.gpu_check import main as gpu_check

    out = tmp_path / "gpu.json"
    assert gpu_check(["--device", "cpu", "--tiny", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (trained,) = report["training"]
    assert trained["size"] == 8 and trained["images_per_s"] > 0
    placement = report["placement"]
    assert placement["ok"] and placement["nodes"] > 0
    assert placement["by_provider"] == {"CPUExecutionProvider": placement["nodes"]}
    service = report["service"]
    assert service["provider"] == "CPUExecutionProvider" and service["invariance"]["ok"]
    assert all(p["errors"] == 0 and p["images_per_s"] > 0 for p in service["sweep"])
    assert len(service["soak"]["memory_mib"]) == 3 and report["failures"] == []
    assert "every check passed" in capsys.readouterr().out


def test_gpu_check_refuses_a_machine_without_cuda(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    from bench import gpu_check

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(gpu_check, "torch_cuda", lambda: {"torch": None, "cuda": False})
    assert gpu_check.main(["--device", "cuda"]) == 2
    assert "no CUDA device to check: this ONNX Runtime has no CUDA provider" in capsys.readouterr().err


def test_output_monitor_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.output_monitor import main as output_monitor

    out = tmp_path / "monitor.json"
    args = ["--models", "mnist-gan", "--batches", "1", "8", "--window", "128", "--repeats", "3"]
    assert output_monitor([*args, "--requests", "2", "--rounds", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    per_batch = [r for r in report["direct"] if "batch" in r]
    assert [r["batch"] for r in per_batch] == [1, 8] and all(r["monitor_us_per_image"] > 0 for r in per_batch)
    assert [r["n"] for r in report["service"]] == [1, 8]
    assert all(r["on_us_per_image"] > 0 and r["off_us_per_image"] > 0 for r in report["service"])
    assert "us/image" in capsys.readouterr().out


def test_workers_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.workers import main as workers

    out = tmp_path / "workers.json"
    args = ["--model", "ring8", "--workers", "1", "2", "--duration", "0.3", "--max-requests", "40",
            "--raw-seconds", "0.05", "--json", str(out)]  # fmt: skip
    assert workers(args) == 0
    report = json.loads(out.read_text())
    points = [(p["workers"], p["n"], p["concurrency"]) for p in report["points"]]
    assert points == [(1, 1, 32), (1, 64, 8), (2, 1, 32), (2, 64, 8)]
    assert all(p["ok"] > 0 and p["errors"] == 0 and p["ratio_to_raw"] > 0 for p in report["points"])
    assert report["raw_images_per_s"] > 0
    assert "ratio" in capsys.readouterr().out


def test_peers_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bench.peers --quick: every server's points, the ratios to raw ORT, the four goal lines and the plot."""
    from bench.peer_servers import SERVERS
    from bench.peers import main as peers

    out, picture = tmp_path / "peers.json", tmp_path / "peers.png"
    assert peers(["--quick", "--json", str(out), "--plot", str(picture)]) == 0
    report = json.loads(out.read_text())
    points = [(p["server"], p["model"], p["n"], p["concurrency"]) for p in report["points"]]
    assert points == [(s, "fashion-cgan", 1, c) for s in SERVERS for c in (1, 2)]
    assert all(p["ok"] > 0 and p["errors"] == 0 and p["ratio_to_raw"] > 0 for p in report["points"])
    raw = report["raw"]["fashion-cgan"]
    assert min(raw["before"].values()) > 0 and min(raw["after"].values()) > 0 and raw["n1_call_ms"] > 0
    (trip,) = report["round_trips"]
    assert trip["model"] == "fashion-cgan" and trip["ms"] > 0
    goals = report["goals"]  # n=1 at 32 clients, n=64 at 8 (neither in this grid), never behind, low load
    assert [g["met"] for g in goals[:2]] == [None, None] and goals[2]["compared"] == 4
    assert isinstance(goals[2]["met"], bool) and len(goals[3]["tax_ms"]) == 1
    printed = capsys.readouterr().out
    assert all(f"{server} " in printed for server in SERVERS)
    for line in ("goal: n=1 at 32 clients", "goal: n=64 at 8 clients", "goal: never behind a peer",
                 "goal: 1 client, n=1"):  # fmt: skip
        assert line in printed
    assert picture.stat().st_size > 1000


def test_peers_benchmark_goals() -> None:
    """The goal checks on a hand-made grid: a ratio under its floor fails, a point behind a peer is listed."""
    from bench.peer_servers import BATCHER, NAIVE, SERVICE
    from bench.peers import evaluate_goals

    def point(server: str, n: int, clients: int, images_per_s: float, p50: float = 1.0) -> dict[str, object]:
        return {"model": "m", "server": server, "repeat": 0, "n": n, "concurrency": clients,
                "images_per_s": images_per_s, "ratio_to_raw": images_per_s / 1000, "p50_ms": p50}  # fmt: skip

    points = [point(SERVICE, 1, 32, 800), point(SERVICE, 64, 8, 850), point(SERVICE, 1, 1, 100, p50=1.3)]
    points += [point(BATCHER, 1, 32, 700), point(NAIVE, 1, 32, 900), point(NAIVE, 1, 1, 90)]
    raw = {"m": {"images_per_s": 1000.0, "n1_call_ms": 0.7}}
    goals = evaluate_goals(points, raw, [{"model": "m", "repeat": 0, "ms": 0.4}])
    assert [g["met"] for g in goals] == [True, False, False, True]
    assert goals[2]["compared"] == 3
    assert [(b["n"], b["clients"], b["peer"]) for b in goals[2]["behind"]] == [(1, 32, NAIVE)]
    assert goals[3]["tax_ms"] == [0.2]


def test_peers_dcgan_becomes_a_version_the_service_loads(tmp_path: Path) -> None:
    """The peers' dcgan.onnx as a model version: the service's own loader accepts it, and it computes the same."""
    import numpy as np
    import onnxruntime as ort

    from bench.peer_servers import DCGAN, PEERS, dcgan_version
    from service.model_folders import VersionDir
    from service.settings import Settings
    from service.versions import Prepared, prepare_version

    version = dcgan_version(PEERS, tmp_path)
    prepared = prepare_version(VersionDir(DCGAN, 1, version), Settings(quality_gate="warn"))
    assert isinstance(prepared, Prepared), getattr(prepared, "reason", None)
    assert prepared.manifest.output_shape == [1, 28, 28] and prepared.manifest.z_dim == 100
    z = np.random.default_rng(3).standard_normal((5, 100), dtype=np.float32)
    cpu = ["CPUExecutionProvider"]
    (want,) = ort.InferenceSession(str(PEERS / "dcgan.onnx"), providers=cpu).run(None, {"z": z})
    (got,) = ort.InferenceSession(str(version / "model.onnx"), providers=cpu).run(["x"], {"z": z})
    assert np.array_equal(got, want)
