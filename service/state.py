"""What one running app holds: settings, metrics, the model repository, and the drain flag."""

from __future__ import annotations

from dataclasses import dataclass

from service.metrics import Metrics
from service.repository import Repository
from service.settings import Settings


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    repository: Repository
    draining: bool = False
    inflight: int = 0
