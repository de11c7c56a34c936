"""The operator against a real cluster (kind, k3d): opt-in, never against a cluster by accident.

Run with `KSERVE_OPERATOR_E2E=1 KUBECONFIG=~/.kube/kind-config python -m pytest tests/e2e`.
It installs the Memcached CRD if missing, works in a fresh namespace it deletes afterwards,
and runs the operator process locally with that kubeconfig.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from devstack.operator_process import OperatorProcess, start_operator
from kserve_operator.clients.kube import KubernetesApi
from kserve_operator.errors import ApiError
from kserve_operator.resources.kinds import DEPLOYMENT, MEMCACHED, NAMESPACE, Kind

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (os.environ.get("KSERVE_OPERATOR_E2E") == "1" and os.environ.get("KUBECONFIG")),
        reason="needs a real cluster: set KUBECONFIG and KSERVE_OPERATOR_E2E=1",
    ),
]

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False)


def call(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_client(fn: Any) -> Any:
    client = await KubernetesApi.connect(user_agent="kserve-operator-e2e")
    try:
        return await fn(client)
    finally:
        await client.close()


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"kserve-operator-e2e-{uuid.uuid4().hex[:6]}"
    crd = yaml.safe_load((ROOT / "manifests/crds/memcached.yaml").read_text())

    async def setup(client: KubernetesApi) -> None:
        if await client.get(CRD, crd["metadata"]["name"]) is None:
            await client.create(CRD, crd)
        await client.create(NAMESPACE, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    call(_with_client(setup))
    yield name
    call(_with_client(lambda client: client.delete(NAMESPACE, name)))


def wait_for(fn: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = call(_with_client(fn))
        if value:
            return value
        time.sleep(2)
    raise TimeoutError("condition not met in time")


def test_sample_memcached_runs(namespace: str, tmp_path: pathlib.Path) -> None:
    operator: OperatorProcess = start_operator(
        pathlib.Path(os.environ["KUBECONFIG"]), tmp_path / "operator.log", args=("--namespace", namespace)
    )
    try:
        body = {"apiVersion": "cache.serverless.xyz/v1alpha1", "kind": "Memcached",
                "metadata": {"name": "e2e", "namespace": namespace}, "spec": {"size": 1}}
        call(_with_client(lambda client: client.create(MEMCACHED, body)))

        async def running(client: KubernetesApi) -> dict[str, Any] | None:
            obj = await client.get(MEMCACHED, "e2e", namespace)
            return obj if obj and obj.get("status", {}).get("phase") == "Running" else None

        mc = wait_for(running, timeout=300)  # image pulls on a fresh cluster take a while
        assert mc["status"]["readyReplicas"] == 1
        deployment = call(_with_client(lambda client: client.get(DEPLOYMENT, "e2e", namespace)))
        assert deployment["metadata"]["ownerReferences"][0]["uid"] == mc["metadata"]["uid"]

        bad = {**body, "metadata": {"name": "bad", "namespace": namespace}, "spec": {"size": 101}}
        with pytest.raises(ApiError) as info:
            call(_with_client(lambda client: client.create(MEMCACHED, bad)))
        assert info.value.status == 422
    finally:
        operator.stop()
