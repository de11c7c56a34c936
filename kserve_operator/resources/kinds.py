"""Every kind the operator reads or writes, as a resource descriptor: group, version, plural, kind.

One module, so that a CRD's coordinates are spelled once; the client façade, the kopf
registrations and the planning code all take these descriptors.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Kind:
    """One resource at one version, as the API server serves it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def is_core(self) -> bool:
        return self.group == ""

    def at_version(self, version: str) -> Kind:
        return dataclasses.replace(self, version=version)


# Ours.
OPERATOR_GROUP = "serving.serverless.xyz"
MEMCACHED = Kind("cache.serverless.xyz", "v1alpha1", "memcacheds", "Memcached")
MODEL_PREWARM = Kind(OPERATOR_GROUP, "v1alpha1", "modelprewarms", "ModelPrewarm")
MODEL_CANARY = Kind(OPERATOR_GROUP, "v1alpha1", "modelcanaries", "ModelCanary")

# Foreign custom resources we read (and, for VirtualServices and HTTPRoutes, patch weights of).
INFERENCE_SERVICE = Kind("serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService")
VIRTUAL_SERVICE = Kind("networking.istio.io", "v1", "virtualservices", "VirtualService")
VIRTUAL_SERVICE_V1BETA1 = VIRTUAL_SERVICE.at_version("v1beta1")
HTTP_ROUTE = Kind("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")  # Gateway API, weights patched

# Built-in kinds.
DEPLOYMENT = Kind("apps", "v1", "deployments", "Deployment")
SERVICE = Kind("", "v1", "services", "Service")
JOB = Kind("batch", "v1", "jobs", "Job")
POD = Kind("", "v1", "pods", "Pod")
NODE = Kind("", "v1", "nodes", "Node", namespaced=False)
NAMESPACE = Kind("", "v1", "namespaces", "Namespace", namespaced=False)
SECRET = Kind("", "v1", "secrets", "Secret")
SERVICE_ACCOUNT = Kind("", "v1", "serviceaccounts", "ServiceAccount")
EVENT = Kind("", "v1", "events", "Event")
LEASE = Kind("coordination.k8s.io", "v1", "leases", "Lease")  # leader election (clients/leader_election.py)
MUTATING_WEBHOOK_CONFIGURATION = Kind("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
                                      "MutatingWebhookConfiguration", namespaced=False)
