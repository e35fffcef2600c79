"""What one running app holds: settings, metrics, the model repository and its control, and the drain flag."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.control import ModelControl
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
    control: ModelControl = field(init=False)

    def __post_init__(self) -> None:
        self.control = ModelControl(self.repository)
