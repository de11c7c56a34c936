"""The ModelPrewarm's vocabulary: the phases of the whole ModelPrewarm and of each node, and the
reasons of its conditions and Events (posted on the ModelPrewarm and on its InferenceService).

Shared values come from resources/conditions.py; a value a phase and a reason share is written
once, in the phase. Tools and people match on the values: they never change.
"""

from __future__ import annotations

import enum

from kserve_operator.resources.conditions import Phase, Reason


class PrewarmPhase(enum.StrEnum):
    """`status.phase`, and each node's `phase` in `status.nodes`."""

    PENDING = Phase.PENDING.value
    WARMING = "Warming"
    WARM = "Warm"
    PARTIALLY_WARM = "PartiallyWarm"  # at least one node warm, at least one failed for good
    FAILED = Phase.FAILED.value


class PrewarmReason(enum.StrEnum):
    """Reasons of status.conditions and of the Events."""

    WARM = PrewarmPhase.WARM.value
    WARMING = PrewarmPhase.WARMING.value
    PARTIALLY_WARM = PrewarmPhase.PARTIALLY_WARM.value
    INVALID_SPEC = Reason.INVALID_SPEC.value
    UNSUPPORTED_URI = "UnsupportedStorageUri"
    MULTIPLE_URIS = "MultipleStorageUris"
    NO_ACCOUNT = "ServiceAccountNotFound"
    NO_SECRET = "SecretNotFound"  # noqa: S105 (a condition reason)
    NO_SECRET_KEY = "SecretKeyNotFound"  # noqa: S105 (a condition reason)
    NO_NODES = "NoQualifyingNodes"
    PRELOAD_FAILED = "PreloadFailed"  # a condition's reason, and the Event of a node that failed
    JOBS_RUNNING = "JobsRunning"
    RETRY_SCHEDULED = "RetryScheduled"
    SETTLED = Reason.SETTLED.value
    BLOCKED = "Blocked"
    FEWER_NODES = "FewerNodesThanRequested"
    NODES_FAILED = "NodesFailed"
    AS_EXPECTED = Reason.AS_EXPECTED.value
    # Events only.
    JOBS_CREATED = "PreloadJobsCreated"
    JOBS_DELETED = "PreloadJobsDeleted"
    MODEL_WARM = Reason.MODEL_WARM.value
    RETRIED = "PreloadRetried"


INVALID_REASONS = (PrewarmReason.INVALID_SPEC, PrewarmReason.UNSUPPORTED_URI, PrewarmReason.MULTIPLE_URIS)
BLOCKING_REASONS = (*INVALID_REASONS, PrewarmReason.NO_ACCOUNT, PrewarmReason.NO_SECRET, PrewarmReason.NO_SECRET_KEY,
                    PrewarmReason.NO_NODES)
