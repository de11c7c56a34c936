"""The InferenceService watcher's vocabulary: it writes no status to an InferenceService (KServe owns
it), so its vocabulary is the reasons of the Events it posts there. The values never change."""

from __future__ import annotations

import enum


class InferenceServiceEvent(enum.StrEnum):
    PREWARM_CREATED = "PrewarmCreated"
    PREWARM_UPDATED = "PrewarmUpdated"
    PREWARM_REMOVED = "PrewarmRemoved"
    PREWARM_NAME_TAKEN = "PrewarmNameTaken"
    PREWARM_NOT_POSSIBLE = "PrewarmNotPossible"
