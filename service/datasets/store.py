"""Dataset jobs' state: one SQLite database (stdlib sqlite3, WAL) under GAN_DATA_DIR, a table of jobs and one of
shards. A shard's row is inserted only after its file was renamed into place and fsynced, so a listed shard is
always complete; a job killed at any instant resumes from what the table lists.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_FILE = "datasets.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,          -- the resolved JobSpec, JSON
    state TEXT NOT NULL,         -- running | done | failed
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    onnx_sha256 TEXT NOT NULL,
    total_rows INTEGER NOT NULL,
    shards INTEGER NOT NULL,
    estimated_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL,
    active_s REAL NOT NULL DEFAULT 0,  -- seconds spent running, over every run
    error TEXT,
    info TEXT NOT NULL           -- what the metadata needs of the model: kind, shape, class names, counts (JSON)
);
CREATE TABLE IF NOT EXISTS shards (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    k INTEGER NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    written_at REAL NOT NULL,
    PRIMARY KEY (job_id, k)
);
"""


@dataclass(frozen=True)
class Job:
    id: str
    spec: dict[str, Any]
    state: str
    model: str
    version: int
    onnx_sha256: str
    total_rows: int
    shards: int
    estimated_bytes: int
    created_at: float
    finished_at: float | None
    active_s: float
    error: str | None
    info: dict[str, Any]


@dataclass(frozen=True)
class Shard:
    k: int
    start: int
    stop: int
    bytes: int
    sha256: str
    written_at: float

    @property
    def rows(self) -> int:
        return self.stop - self.start


class Store:
    """Used from the event loop's thread only; every statement is small (a row or an aggregate)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / DB_FILE
        self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit; `with self.db` for more
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL: a commit survives the process being killed (kill -9); only a power cut may lose
        # the last shards' rows, and those shards are then recomputed to the same bytes.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def insert(self, job: Job) -> None:
        self.db.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, json.dumps(job.spec), job.state, job.model, job.version, job.onnx_sha256, job.total_rows,
             job.shards, job.estimated_bytes, job.created_at, job.finished_at, job.active_s, job.error,
             json.dumps(job.info)),
        )  # fmt: skip

    def job(self, job_id: str) -> Job | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, state: str | None = None) -> list[Job]:
        if state is None:
            cursor = self.db.execute("SELECT * FROM jobs ORDER BY created_at, id")
        else:
            cursor = self.db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY created_at, id", (state,))
        return [_job(row) for row in cursor]

    def shards(self, job_id: str) -> list[Shard]:
        rows = self.db.execute("SELECT * FROM shards WHERE job_id = ? ORDER BY k", (job_id,))
        return [Shard(r["k"], r["start"], r["stop"], r["bytes"], r["sha256"], r["written_at"]) for r in rows]

    def add_shard(self, job_id: str, shard: Shard, active_s: float) -> None:
        """The shard is on disk, complete: list it, and count the time spent since the last one."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, shard.k, shard.start, shard.stop, shard.bytes, shard.sha256, shard.written_at),
            )
            self.db.execute("UPDATE jobs SET active_s = active_s + ? WHERE id = ?", (active_s, job_id))

    def drop_shard(self, job_id: str, k: int) -> None:
        self.db.execute("DELETE FROM shards WHERE job_id = ? AND k = ?", (job_id, k))

    def finish(self, job_id: str, state: str, error: str | None = None, active_s: float = 0.0) -> None:
        self.db.execute(
            "UPDATE jobs SET state = ?, error = ?, finished_at = ?, active_s = active_s + ? WHERE id = ?",
            (state, error, time.time(), active_s, job_id),
        )

    def delete(self, job_id: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def bytes_written(self) -> int:
        """Bytes of every listed shard of every job."""
        return int(self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM shards").fetchone()[0])

    def bytes_reserved(self) -> int:
        """Bytes running jobs are still expected to write (their estimates less what they wrote)."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(MAX(0, j.estimated_bytes - COALESCE("
            "(SELECT SUM(s.bytes) FROM shards s WHERE s.job_id = j.id), 0))), 0) "
            "FROM jobs j WHERE j.state = 'running'"
        ).fetchone()
        return int(row[0])

    def expired(self, before: float) -> list[str]:
        rows = self.db.execute(
            "SELECT id FROM jobs WHERE state != 'running' AND finished_at < ? ORDER BY finished_at", (before,)
        )
        return [row["id"] for row in rows]


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    values["spec"], values["info"] = json.loads(values["spec"]), json.loads(values["info"])
    return Job(**values)
