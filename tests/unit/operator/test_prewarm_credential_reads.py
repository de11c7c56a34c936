"""A ModelPrewarm reads its tenant's service account and Secrets only when the plan acts on them
(controllers/prewarm.py): they are never watched (that would need list/watch on Secrets in every
namespace), so a reconcile after one at rest plans with the ones it read last for this uid and
generation, and reads them again when the plan creates Jobs, keeps a credential copy, or waits.
At rest: no read."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from kserve_operator.clients.kube import Object, PatchType
from kserve_operator.controllers import prewarm
from kserve_operator.controllers.core import ReconcileCore
from kserve_operator.resources.kinds import JOB, MODEL_PREWARM, NODE, POD, SERVICE_ACCOUNT, Kind
from kserve_operator.resources.label_selectors import LabelSelector
from kserve_operator.resources.prewarm import LABEL_PREWARM_UID
from kserve_operator.settings import FINALIZER, OperatorSettings
from tests.unit.operator.prewarm_shapes import finished_job, node, pod, result

NS, NAME, UID = "ml", "mnist", "uid-1"


class Cluster:
    """A `KubeApi` over dicts: what it holds, and every read it answered."""

    def __init__(self, objects: list[tuple[Kind, dict[str, Any]]]) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        for kind, obj in objects:
            self.put(kind, obj)
        self.reads: list[str] = []

    def put(self, kind: Kind, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(kind.plural, meta.get("namespace") or "", meta["name"])] = obj

    async def get(self, kind: Kind, name: str, namespace: str | None = None) -> Object | None:
        self.reads.append(f"get {kind.plural}/{name}")
        return self.objects.get((kind.plural, namespace or "", name))

    async def list(self, kind: Kind, namespace: str | None = None, *, label_selector: str | None = None,
                   field_selector: str | None = None) -> list[Object]:
        self.reads.append(f"list {kind.plural}")
        selector = LabelSelector.parse(label_selector)
        return [o for (plural, ns, _), o in self.objects.items() if plural == kind.plural
                and (namespace is None or ns == namespace) and selector.matches(o["metadata"].get("labels"))]

    async def create(self, kind: Kind, body: Mapping[str, Any]) -> Object:
        meta = dict(body["metadata"])
        meta.setdefault("name", f"{meta.pop('generateName', 'x')}{len(self.objects)}")
        created = {**body, "metadata": {**meta, "uid": f"u-{meta['name']}"}}
        self.put(kind, created)
        return created

    async def patch(self, kind: Kind, name: str, patch: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
                    namespace: str | None = None, patch_type: PatchType = PatchType.MERGE,
                    status: bool = False) -> Object:
        obj = self.objects[(kind.plural, namespace or "", name)]
        assert isinstance(patch, Mapping)
        if status:
            obj["status"] = {**(obj.get("status") or {}), **patch["status"]}
        return obj

    async def delete(self, kind: Kind, name: str, *, namespace: str | None = None, propagation: str = "Background",
                     uid: str | None = None) -> bool:
        return self.objects.pop((kind.plural, namespace or "", name), None) is not None


def credential_reads(cluster: Cluster) -> list[str]:
    return [r for r in cluster.reads if r.startswith(("get serviceaccounts", "get secrets"))]


def test_the_account_is_read_while_jobs_are_wanted_or_running_and_not_at_rest() -> None:
    body: dict[str, Any] = {"apiVersion": "serving.serverless.xyz/v1alpha1", "kind": "ModelPrewarm",
            "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1, "finalizers": [FINALIZER]},
            "spec": {"storageUri": "s3://models/mnist", "nodeCount": 1, "device": "cpu"}}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": NS}}
    cluster = Cluster([(MODEL_PREWARM, body), (SERVICE_ACCOUNT, account),
                       (NODE, node("gpu-1", gpus=0))])
    settings = OperatorSettings()
    ctx = prewarm.PrewarmContext(settings=settings, core=ReconcileCore(prewarm.CONTROLLER, cluster))
    log = logging.getLogger("test")

    def reconcile() -> list[str]:
        cluster.reads.clear()
        asyncio.run(prewarm.reconcile(ctx, NS, NAME, log))
        return credential_reads(cluster)

    assert reconcile() == ["get serviceaccounts/default"]  # nothing remembered yet: read
    jobs = [o for (plural, _, _), o in cluster.objects.items() if plural == JOB.plural]
    assert len(jobs) == 1, "the plan created the Job (with what it read)"
    assert reconcile() == ["get serviceaccounts/default"]  # the Job runs: the plan waits, reads fresh

    job = jobs[0]
    cluster.put(JOB, finished_job(job, "Complete"))
    finished = pod(job["metadata"]["name"], phase="Succeeded", exit_code=0, message=result())
    finished["metadata"]["namespace"] = settings.prewarm_namespace
    finished["metadata"]["labels"][LABEL_PREWARM_UID] = UID
    cluster.put(POD, finished)
    # The pass after a waiting one reads fresh at once (one plan, not a plan and a re-plan) and finds it Warm.
    assert reconcile() == ["get serviceaccounts/default"]
    assert (cluster.objects[("modelprewarms", NS, NAME)].get("status") or {}).get("phase") == "Warm"
    assert reconcile() == [] and reconcile() == [] and reconcile() == []  # at rest: never

    body["metadata"]["generation"] = 2  # a spec change: what was read for generation 1 is not used
    assert reconcile() == ["get serviceaccounts/default"]
