"""Dataset jobs (/datasets): a labelled synthetic set written to disk in shards, in the background.

spec (the job and its row plan), shards (deterministic bytes, atomic writes), store (SQLite state), limits,
croissant (the metadata), runner (the jobs' tasks, through the batchers' background lane), workers (their CPU
work's processes), routes (HTTP), cli (the same shards from ONNX Runtime directly: one pod of a Kubernetes
Indexed Job). docs/DATASETS.md describes them.
"""
