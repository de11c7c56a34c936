"""Predictor pods prefer the nodes where their model is warm: a mutating admission webhook on Pods.

Every operator replica serves it (kopf's WebhookServer on `settings.webhook_port`, behind the
shipped Service `kserve-operator-webhook`); kopf does not manage the configuration: the shipped
MutatingWebhookConfiguration (manifests/webhook/) calls the path `/warm-node-placement`, the
handler id below, and its `caBundle` is set at start (clients/webhook_certs.py).

The admission path makes no API call: the ModelPrewarms come from a kopf index kept by the
operator's watch. It never rejects a pod: whatever goes wrong, the pod is admitted unchanged
and the failure is logged (once per kind of failure, then at debug level).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kopf

from kserve_operator.clients.kube import KubeApi
from kserve_operator.clients.webhook_certs import provision_webhook_certificates
from kserve_operator.planning import placement as plan
from kserve_operator.resources.kinds import MODEL_PREWARM, POD
from kserve_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

#: The handler id, hence the URL path the shipped MutatingWebhookConfiguration calls.
WEBHOOK_ID = "warm-node-placement"


def warm_models(namespace: str | None, name: str | None, status: kopf.Status, **_: Any) -> dict[str, plan.WarmModel]:
    """Index `placement_warm_models`: namespace -> the ModelPrewarms there with a warm node."""
    if namespace is None or name is None:
        return {}
    model = plan.warm_model(name, status)
    return {namespace: model} if model is not None else {}


class PlacementWebhook:
    """The admission handler; remembers which failures it has logged at warning level."""

    def __init__(self) -> None:
        self._logged: set[str] = set()

    async def admit(self, body: kopf.Body, patch: kopf.Patch, placement_warm_models: Any = None, **_: Any) -> None:
        """`placement_warm_models` is the kopf index (namespace -> WarmModels), passed by kopf by its id."""
        try:
            namespace = body.get("metadata", {}).get("namespace")
            if not namespace:
                return
            models: Iterable[plan.WarmModel] = (placement_warm_models or {}).get(namespace, [])
            hostnames = plan.warm_hostnames(body, models)
            decision = plan.plan_placement(body, hostnames)
            if decision is None:
                return
            patch.setdefault("spec", {})["affinity"] = decision.affinity
            patch.setdefault("metadata", {}).setdefault("annotations", {})[plan.PREFERRED_ANNOTATION] = (
                decision.annotation)
        except Exception as exc:  # never reject a pod: admitted unchanged, the failure logged
            patch.clear()
            what = f"{type(exc).__name__}: {exc}"
            level = logging.DEBUG if what in self._logged else logging.WARNING
            self._logged.add(what)
            logger.log(level, "Placement skipped, pod %s/%s admitted unchanged: %s",
                       body.get("metadata", {}).get("namespace"),
                       body.get("metadata", {}).get("name") or body.get("metadata", {}).get("generateName"), what)


async def start_webhook(settings: OperatorSettings, api: KubeApi, tuned: kopf.OperatorSettings) -> bool:
    """Certificates, then kopf's server on the port; False (webhook off, logged) when they cannot be had.

    The operator's other controllers run regardless: with `failurePolicy: Ignore` the API
    server admits predictor pods unchanged while no replica serves the webhook.
    """
    try:
        files = await provision_webhook_certificates(
            api, namespace=settings.webhook_namespace, service=settings.webhook_service,
            secret_name=settings.webhook_secret, configuration_name=settings.webhook_configuration)
    except Exception as exc:
        logger.error("The placement webhook is off: its certificates could not be provisioned (%s: %s).",
                     type(exc).__name__, exc)
        return False
    tuned.admission.server = kopf.WebhookServer(port=settings.webhook_port, certfile=str(files.certfile),
                                                pkeyfile=str(files.keyfile), cafile=str(files.cafile))
    tuned.admission.managed = None  # the shipped configuration is the one the API server uses
    logger.info("Serving the placement webhook on port %d (path /%s).", settings.webhook_port, WEBHOOK_ID)
    return True


def register(settings: OperatorSettings, registry: kopf.OperatorRegistry) -> None:
    """The index and the admission handler; only when the webhook runs (kopf refuses handlers without a server)."""
    kopf.index(MODEL_PREWARM.group, MODEL_PREWARM.version, MODEL_PREWARM.plural, id="placement_warm_models",
               registry=registry)(warm_models)
    kopf.on.mutate(POD.version, POD.plural, id=WEBHOOK_ID, operations=["CREATE"], ignore_failures=True,
                   labels={plan.ISVC_LABEL: kopf.PRESENT, plan.COMPONENT_LABEL: plan.PREDICTOR},
                   registry=registry)(PlacementWebhook().admit)
