"""`AugmentDataset`: a seeded synthetic set streamed from /augment as a PyTorch IterableDataset.

The set is cut into pages of `page_rows` rows; page p is rows p * page_rows .. (p + 1) * page_rows - 1.
Distributed ranks take pages r, r + R, ...; within a rank, DataLoader worker w of W takes every W-th of its
rank's pages, and yields them in global row order. Every row of the set is yielded exactly once whatever
`num_workers` is, and a row's bytes depend only on (model, version, seed, index): the rows are the same for
0, 1 or 8 workers, only the order in which the DataLoader interleaves the workers' pages differs.
This module imports torch; the rest of the package never does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Unpack

import torch
from torch.utils.data import IterableDataset, get_worker_info

from gan_client.api import Client, PlanSpec, SetSpec
from gan_client.retry import RetryPolicy

Row = dict[str, Any]


class AugmentDataset(IterableDataset[Any]):
    """The rows of `/augment` for `spec` and `seed`: `{"x": tensor, "y": int, "index": int}` per row.

    `x` is uint8 `(H, W, C)` for image models and float32 `(D,)` for vector models (`y` only for
    conditional models); `transform` maps each row dict to what the DataLoader collates. The constructor
    asks the service for the set's size and pins the model version (the default one unless `version` is
    given), so a version loaded mid-epoch does not mix into the set. Rows come in class order (the plan's
    order): shuffle with a buffer or a sampler downstream.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        seed: int,
        page_rows: int = 256,
        version: int | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        transform: Callable[[Row], Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        **spec: Unpack[PlanSpec],
    ) -> None:
        super().__init__()
        if rank is None or world_size is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if distributed else 0
            world_size = torch.distributed.get_world_size() if distributed else 1
        self.base_url, self.model, self.page_rows = base_url, model, page_rows
        self.client_options: dict[str, Any] = {"api_key": api_key, "timeout_s": timeout_s, "retry": retry}
        self.transform, self.rank, self.world_size = transform, rank, world_size
        self.spec: SetSpec = {**spec, "seed": seed}
        with self._client() as client:
            probe = client.augment(model, offset=0, limit=1, version=version, **self.spec)
        assert probe.total_rows is not None  # a set's page always carries its size
        self.version, self.total_rows = probe.version, probe.total_rows
        self.pages = math.ceil(self.total_rows / page_rows)

    def _client(self) -> Client:
        return Client(self.base_url, **self.client_options)

    def rank_pages(self) -> range:
        """The pages of this rank, in order."""
        return range(self.rank, self.pages, self.world_size)

    def __len__(self) -> int:
        """Rows of this rank (all of them with one process)."""
        return sum(min(self.page_rows, self.total_rows - p * self.page_rows) for p in self.rank_pages())

    def worker_pages(self) -> range:
        """The pages of this DataLoader worker (all of the rank's in the main process)."""
        info = get_worker_info()
        pages = self.rank_pages()
        return pages if info is None else pages[info.id :: info.num_workers]

    def __iter__(self) -> Iterator[Any]:
        with self._client() as client:
            for page in self.worker_pages():
                samples = client.augment(
                    self.model,
                    offset=page * self.page_rows,
                    limit=self.page_rows,
                    version=self.version,
                    **self.spec,
                )
                assert samples.x is not None  # npz: the arrays
                x = torch.from_numpy(samples.x.copy())  # np.load's arrays are read-only views of the body
                for i, index in enumerate(samples.indices):
                    row: Row = {"x": x[i], "index": index}
                    if samples.labels is not None:
                        row["y"] = samples.labels[i]
                    yield row if self.transform is None else self.transform(row)


def to_float_chw(row: Row) -> Row:
    """A transform: uint8 (H, W, C) images as float32 (C, H, W) in [-1, 1], the generator's own scale."""
    x = row["x"]
    if x.dtype == torch.uint8:
        row = {**row, "x": x.permute(2, 0, 1).float().div(127.5).sub(1.0)}
    return row
