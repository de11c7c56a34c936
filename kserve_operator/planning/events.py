"""Events a plan asks for: decided in planning, posted by the reconcile core through the client."""

from __future__ import annotations

import dataclasses

NORMAL = "Normal"
WARNING = "Warning"


@dataclasses.dataclass(frozen=True)
class EventPlan:
    type: str  # NORMAL | WARNING
    reason: str  # CamelCase, a constant of the controller's vocabulary
    message: str
