"""The tenant's S3 credentials of a ModelPrewarm: read from its namespace, copied beside the Jobs.

Split from controllers/prewarm.py. The tenant's ServiceAccount comes from an informer; its Secrets
are read by name only when the plan acts on them (never watched: that would need list/watch on
Secrets in every namespace). The copy lives in the pre-warm namespace, owned by the Jobs that use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.clients.kube import KubeApi
from kserve_operator.planning import prewarm as plan
from kserve_operator.planning.s3_credentials import listed_secrets
from kserve_operator.resources.kinds import SECRET, SERVICE_ACCOUNT
from kserve_operator.resources.prewarm import (
    DEFAULT_SERVICE_ACCOUNT,
    LABEL_PREWARM_NAMESPACE,
    LABEL_PREWARM_UID,
    MANAGED_BY,
    PrewarmPlatform,
)


async def read_credentials(api: KubeApi, body: Mapping[str, Any]) -> tuple[
        Mapping[str, Any] | None, dict[str, Mapping[str, Any] | None]]:
    """The tenant's service account (from its informer) and each Secret it lists, by name (a GET: never watched)."""
    namespace = body["metadata"]["namespace"]
    account_name = (body.get("spec") or {}).get("serviceAccountName") or DEFAULT_SERVICE_ACCOUNT
    account = await api.get(SERVICE_ACCOUNT, str(account_name), namespace)
    secrets: dict[str, Mapping[str, Any] | None] = {}
    for secret in listed_secrets(account or {}):
        secrets[secret] = await api.get(SECRET, secret, namespace)
    return account, secrets


async def apply_credentials(api: KubeApi, decided: plan.PrewarmPlan, body: Mapping[str, Any],
                            jobs: Sequence[Mapping[str, Any]], platform: PrewarmPlatform,
                            live: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The copy of the tenant's S3 values beside the Jobs: owned by each Job that uses it (the
    garbage collector removes it with the last), deleted as soon as no Job needs it. Written
    before new Jobs (their Pods start without waiting for it), its owners completed after.
    Values are compared, never logged. Returns the copy as it now stands."""
    copy = decided.credentials
    if copy is None:
        if live is not None and decided.drop_credentials:
            await api.delete(SECRET, live["metadata"]["name"], namespace=platform.namespace)
            return None
        return dict(live) if live is not None else None
    owners = [{"apiVersion": "batch/v1", "kind": "Job", "name": j["metadata"]["name"], "uid": j["metadata"]["uid"]}
              for j in jobs if j["metadata"].get("uid")]
    meta = body["metadata"]
    if live is None:
        return await api.create(SECRET, {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": copy.name, "namespace": platform.namespace, "ownerReferences": owners,
                         "labels": {**MANAGED_BY, LABEL_PREWARM_NAMESPACE: meta["namespace"],
                                    LABEL_PREWARM_UID: meta.get("uid", "")}},
            "data": dict(copy.data),
        })
    if live.get("data") != dict(copy.data) or \
            {o.get("uid") for o in live["metadata"].get("ownerReferences") or []} != {o["uid"] for o in owners}:
        return await api.patch(SECRET, copy.name, {"data": dict(copy.data), "metadata": {"ownerReferences": owners}},
                               namespace=platform.namespace)
    return dict(live)
