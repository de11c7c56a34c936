"""A real cluster for tests and ``make demo-real``: the control plane plus the process kubelet,
with the manifests installed as a user installs them.

``RealCluster`` offers the surface of ``devcluster.EmulatedCluster`` that the end-to-end tests
and the demo use (``url``, ``write_kubeconfig``, ``client``, ``add_node``, ``remove_node``,
``set_node_ready``, ``node_root``, ``pod_log``, ``register_local_image``), so a scenario is
written once for either. What it adds is what only a real server has:

* ``install_manifests()`` runs ``kubectl apply -k manifests/`` (the shipped CRDs, namespace,
  RBAC, Deployment and NetworkPolicy, exactly as a user applies them), waits for every CRD to be
  Established, checks that the operator's own pod passes the namespace's ``restricted`` Pod
  Security admission, then scales that Deployment to 0: the operator's image cannot run under
  the process kubelet (its in-cluster credentials live at a fixed path), so the tests run the
  operator as a local process with the ServiceAccount's token instead.
* ``service_account_kubeconfig()``: a kubeconfig holding a TokenRequest token for a
  ServiceAccount, so the operator authenticates as ``kserve-operator:kserve-operator`` and is
  authorised by the shipped ClusterRole and nothing else.
* ``kubectl(*args)``: the ``kubectl`` built with the control plane, with the admin kubeconfig.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from controlplane.kubelet import ProcessKubelet
from controlplane.launch import ControlPlane, ControlPlaneError
from devcluster.client import ApiError, ClusterClient

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
OPERATOR_NAMESPACE = "kserve-operator"
OPERATOR_ACCOUNT = "kserve-operator"
#: Every request of this user is in the API server's audit log (``plane.audit_events()``).
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"


class RealCluster:
    """The real control plane and simulated nodes (see the module docstring)."""

    def __init__(self, bin_dir: Path, work_dir: Path | None = None, *, max_processes: int = 4,
                 status_only_delay: float = 0.3, node_monitor_grace_seconds: int = 16) -> None:
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="realcluster-"))
        self.plane = ControlPlane(bin_dir, self.work_dir / "controlplane",
                                  node_monitor_grace_seconds=node_monitor_grace_seconds,
                                  audit_users=(OPERATOR_USER,))
        self.kubelet = ProcessKubelet(self.plane, self.work_dir / "kubelet", max_processes=max_processes,
                                      status_only_delay=status_only_delay)

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> RealCluster:
        self.plane.start()
        try:
            self.kubelet.start()
        except BaseException:
            self.plane.stop()
            raise
        return self

    def stop(self) -> None:
        self.kubelet.stop()
        self.plane.stop()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> RealCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the EmulatedCluster surface --------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.plane.url

    def client(self, user_agent: str = "realcluster-client") -> ClusterClient:
        """An admin client (system:masters) for the test's own setup and checks."""
        self.plane.check()
        return ClusterClient(self.url, user_agent, ssl_context=self.plane.ssl_context())

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        return self.plane.write_kubeconfig(path, namespace=namespace)

    def add_node(self, name: str, *, labels: Mapping[str, str] | None = None,
                 taints: Sequence[Mapping[str, str]] = (), gpus: int = 0,
                 capacity: Mapping[str, str | int] | None = None) -> dict[str, Any]:
        return self.kubelet.add_node(name, labels=labels, taints=taints, gpus=gpus, capacity=capacity)

    def remove_node(self, name: str) -> None:
        self.kubelet.remove_node(name)

    def stop_node(self, name: str) -> None:
        self.kubelet.stop_node(name)

    def set_node_ready(self, name: str, ready: bool) -> None:
        self.kubelet.set_node_ready(name, ready)

    def node_root(self, name: str) -> Path:
        return self.kubelet.node_root(name)

    def pod_log(self, namespace: str, name: str) -> str | None:
        return self.kubelet.pod_log(namespace, name)

    def register_local_image(self, image: str, entrypoint: Sequence[str], *,
                             env: Mapping[str, str] | None = None) -> None:
        self.kubelet.register_image(image, entrypoint, env)

    def register_local_command(self, name: str, argv: Sequence[str]) -> None:
        self.kubelet.register_command(name, argv)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, *, interval: float = 0.1,
                 message: str = "condition") -> T:
        deadline = time.monotonic() + timeout
        while True:
            self.plane.check()
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{message} not met within {timeout}s")
            time.sleep(interval)

    # ---- what only a real cluster has -------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the kubectl built with the control plane against this cluster, as the admin."""
        self.plane.check()
        result = subprocess.run([str(self.plane.binary("kubectl")), f"--kubeconfig={self.plane.admin_kubeconfig}",
                                 *args], capture_output=True, text=True, input=input, timeout=120)
        if check and result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed ({result.returncode}): "
                                    f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def install_manifests(self, *, extra_crds: Sequence[Path] = ()) -> None:
        """``kubectl apply -k manifests/`` as shipped, plus ``extra_crds`` (KServe's, Istio's)."""
        for path in extra_crds:
            self.kubectl("apply", "--server-side", "-f", str(path))
        self.kubectl("apply", "-k", str(ROOT / "manifests"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        kube = self.client()
        selector = "app.kubernetes.io/name=kserve-operator"
        pods_path = f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/pods"
        # The ReplicaSet controller creating the operator's pod proves it passes `restricted` admission.
        self.wait_for(lambda: kube.list(pods_path, label_selector=selector), 60,
                      message="the operator Deployment's pod to be admitted under Pod Security 'restricted' "
                      f"(see `kubectl -n {OPERATOR_NAMESPACE} describe rs` for FailedCreate events)")
        self.kubectl("-n", OPERATOR_NAMESPACE, "scale", "deployment/kserve-operator", "--replicas=0")

    def service_account_token(self, namespace: str = OPERATOR_NAMESPACE, name: str = OPERATOR_ACCOUNT,
                              seconds: int = 24 * 3600) -> str:
        kube = self.client()
        answer = kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds}})
        return str(answer["status"]["token"])

    def service_account_kubeconfig(self, path: Path, namespace: str = OPERATOR_NAMESPACE,
                                   name: str = OPERATOR_ACCOUNT) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount (a TokenRequest token)."""
        return self.plane.write_kubeconfig(path, token=self.service_account_token(namespace, name),
                                           user=f"system:serviceaccount:{namespace}:{name}")

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        kube = self.client()
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": name, "labels": dict(labels or {})}})
        # The service-account controller makes `default` shortly after; pods need it.
        self.wait_for(lambda: kube.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"), 30,
                      message=f"the default ServiceAccount in {name}")

    def delete_namespace(self, name: str, timeout: float = 60) -> None:
        kube = self.client()
        try:
            kube.delete(f"/api/v1/namespaces/{name}")
        except ApiError as exc:
            if exc.status != 404:
                raise
        kube.wait_gone(f"/api/v1/namespaces/{name}", timeout=timeout, interval=0.25)
