"""torch-mnist as a data scientist writes it: the KServe Python SDK's `V1beta1InferenceService`,
sent with `KServeClient` (the `kserve` package of the dev extra; the operator image has none).

The values come from manifests/samples/torch-mnist.yaml, so the demo applies the sample itself,
only through the SDK's typed objects instead of kubectl.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
TORCH_MNIST = ROOT / "manifests" / "samples" / "torch-mnist.yaml"


def kserve_client(kubeconfig: pathlib.Path) -> Any:
    """A `KServeClient` for the cluster in `kubeconfig` (imported here: the SDK is slow to import)."""
    import kserve

    return kserve.KServeClient(config_file=str(kubeconfig))


def torch_mnist(*, name: str | None = None, storage_uri: str | None = None,
                annotations: Mapping[str, str] | None = None) -> Any:
    """The sample as a `V1beta1InferenceService`; `name`, `storage_uri` and `annotations` change it
    (annotations replace the sample's, so leaving out `serverless.xyz/prewarm` opts it out)."""
    import kserve
    from kubernetes.client import V1ObjectMeta, V1ResourceRequirements, V1Toleration

    sample: dict[str, Any] = yaml.safe_load(TORCH_MNIST.read_text())
    predictor = sample["spec"]["predictor"]
    model = predictor["model"]
    meta = sample["metadata"]
    return kserve.V1beta1InferenceService(
        api_version=f"{kserve.constants.KSERVE_GROUP}/{kserve.constants.KSERVE_V1BETA1_VERSION}",
        kind=kserve.constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(name=name or meta["name"], namespace=meta["namespace"],
                              annotations=dict(meta["annotations"] if annotations is None else annotations)),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=kserve.V1beta1PredictorSpec(
            min_replicas=predictor["minReplicas"],
            service_account_name=predictor["serviceAccountName"],
            node_selector=predictor["nodeSelector"],
            tolerations=[V1Toleration(**toleration) for toleration in predictor["tolerations"]],
            model=kserve.V1beta1ModelSpec(
                model_format=kserve.V1beta1ModelFormat(name=model["modelFormat"]["name"]),
                storage_uri=storage_uri or model["storageUri"],
                resources=V1ResourceRequirements(**model["resources"]),
            ),
        )),
    )
