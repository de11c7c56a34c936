"""A GPU pool on the emulated cluster or the real control plane: simulated nodes with
`nvidia.com/gpu` allocatable, labelled and tainted as the NVIDIA GPU operator leaves them, and the
real preloader registered as the `kserve-preloader:0.1.0` image, so that each preloader Job's pod runs as a
local `python -m preloader` process (devcluster/jobs.py and devcluster/kubelet.py on the emulated
cluster, controlplane/kubelet.py on the real one).

This machine has no CUDA: whoever runs the preloader here asks for `--device cpu`.
"""

from __future__ import annotations

import sys

from controlplane.cluster import RealCluster
from devcluster import EmulatedCluster

PRELOADER_IMAGE = "kserve-preloader:0.1.0"  # the operator's default PRELOADER_IMAGE
GPU_LABELS = {"nvidia.com/gpu.present": "true"}
GPU_TAINTS = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]


def run_preloader_locally(cluster: EmulatedCluster | RealCluster) -> None:
    """`kserve-preloader:0.1.0` stands for `python -m preloader` here (the image's ENTRYPOINT)."""
    register = (cluster.sim.register_local_image if isinstance(cluster, EmulatedCluster)
                else cluster.register_local_image)
    register(PRELOADER_IMAGE, [sys.executable, "-m", "preloader"], env={"AWS_EC2_METADATA_DISABLED": "true"})


def add_gpu_nodes(cluster: EmulatedCluster | RealCluster, *names: str) -> None:
    """One GPU each, with the GPU operator's label and taint."""
    for name in names:
        cluster.add_node(name, gpus=1, labels=GPU_LABELS, taints=GPU_TAINTS)
