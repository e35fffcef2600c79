"""What the client raises: the service's answers `{"detail", "field"}` as ApiError, and its own checks."""

from __future__ import annotations

from typing import Any

import httpx


class GanError(Exception):
    """Every error this package raises itself (transport errors stay httpx's own)."""


class ApiError(GanError):
    """A non-2xx answer: its status, the service's `detail` and `field`, and `Retry-After` when it gave one."""

    def __init__(
        self, status: int, detail: str, field: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{status}: {detail}" + (f" (field {field})" if field else ""))
        self.status, self.detail, self.field, self.retry_after_s = status, detail, field, retry_after_s

    @classmethod
    def of(cls, response: httpx.Response, retry_after_s: float | None = None) -> ApiError:
        detail, field = response.reason_phrase or "error", None
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            detail = str(body.get("detail", body.get("error", detail)))
            field = body.get("field")
        elif response.text:
            detail = response.text[:500]
        return cls(response.status_code, detail, field, retry_after_s)


class ChecksumError(GanError):
    """A downloaded shard whose sha256 is not the one the service announced (the file is not kept)."""


class DatasetFailed(GanError):
    """A dataset job ended in a state other than done (failed or cancelled): the job's own error."""
