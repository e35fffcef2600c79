"""Which execution provider runs each node of a graph, as ONNX Runtime really assigns them.

`session.get_providers()[0]` names the first provider registered, not where every node runs: ONNX Runtime
assigns nodes one by one and hands any node the preferred provider does not take (an op or an attribute it
lacks, such as ConvTranspose with auto_pad=SAME_*, or shape arithmetic it prefers on the host) to the CPU
provider, with a warning at most. ONNX Runtime's profiler records the provider of every node it runs, so one
profiled run of one row tells the whole placement after graph optimisation (fused nodes under their fused
names); that is what this module reads.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from service.runner import zero_feeds

KERNEL = "_kernel_time"


@dataclass(frozen=True)
class NodePlacement:
    name: str  # the node's name after optimisation
    op: str
    provider: str


def node_placements(
    path: Path, providers: Sequence[Any], options: ort.SessionOptions | None = None
) -> list[NodePlacement]:
    """Every node the graph runs, with its op and provider, in the order of one profiled run of one row.

    `providers` as for ort.InferenceSession; `options` (default: ORT_ENABLE_ALL) are copied into a profiling
    session of their own, so the placement is the one a session with those options gets."""
    with tempfile.TemporaryDirectory(prefix="gan-placement-") as scratch:
        profiled = options or ort.SessionOptions()
        if options is None:
            profiled.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        profiled.enable_profiling = True
        profiled.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(path), profiled, providers=list(providers))
        session.run(None, zero_feeds(session, 1))
        events = json.loads(Path(session.end_profiling()).read_text())
    found: dict[str, NodePlacement] = {}
    for event in events:
        args = event.get("args", {})
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith(KERNEL) and "provider" in args:
            node = name[: -len(KERNEL)]
            found.setdefault(node, NodePlacement(node, args.get("op_name", "?"), args["provider"]))
    return list(found.values())


def off_provider(placements: Sequence[NodePlacement], provider: str) -> list[NodePlacement]:
    """The nodes that do not run on `provider`."""
    return [p for p in placements if p.provider != provider]


def describe(off: Sequence[NodePlacement], total: int, wanted: str, limit: int = 12) -> str:
    """One line: how many nodes run elsewhere than `wanted`, and which (name, op, provider)."""
    listed = ", ".join(f"{p.name} ({p.op} on {p.provider})" for p in off[:limit])
    more = f" and {len(off) - limit} more" if len(off) > limit else ""
    return f"{len(off)} of {total} nodes would not run on {wanted}: {listed}{more}"
