"""Dockerfile.gpu builds what was reviewed: bases named by digest, every dependency from a hashed lock
(`python -m devstack.lock_preloader`) that satisfies pyproject.toml's preloader extra, torch at the
version CI tests. It used to name its bases by tag and let pip pick every indirect dependency."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = (REPO / "Dockerfile.gpu").read_text()
GPU_LOCK = REPO / "requirements-preloader-gpu.lock"
INITIALIZER_LOCK = REPO / "requirements-preloader-initializer.lock"
DIGEST = re.compile(r"^[a-z0-9./_-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


def _instructions() -> list[str]:
    """Dockerfile instructions, continuation lines joined, comments dropped."""
    text = "\n".join(line for line in DOCKERFILE.splitlines() if not line.lstrip().startswith("#"))
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip()]


def _pins(path: Path) -> dict[str, str]:
    text = path.read_text()
    pins = {}
    for line in text.splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split(" ")[0].split("==")
            pins[name.lower().replace("_", "-")] = version
    assert text.count("--hash=sha256:") == len(pins), f"every pin in {path.name} has exactly one hash"
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in re.findall(r"--hash=sha256:(\S+)", text))
    return pins


def _extra() -> list[Requirement]:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return [Requirement(r) for r in extras["preloader"]]


def test_every_base_is_named_by_digest() -> None:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, re.MULTILINE))
    bases = [line.split()[1] for line in _instructions() if line.startswith("FROM ")]
    assert len(bases) == 3
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert DIGEST.match(image), f"FROM {base} ({image}) is not named by digest"


def test_every_pip_install_is_from_a_hashed_lock_or_the_package_alone() -> None:
    installs = [line for line in _instructions() if "pip install" in line]
    commands = [c.strip() for line in installs for c in line.split("&&") if "pip install" in c]
    assert commands, "no pip install found"
    for command in commands:
        args = command.split("pip install", 1)[1].split()
        locked = args[:1] == ["--require-hashes"] and args[1] == "-r" and args[2].endswith(".lock") and len(args) == 3
        package = args == ["--no-deps", "."]
        assert locked or package, f"unpinned install: {command}"
    assert "-r requirements-preloader-gpu.lock" in DOCKERFILE
    assert "-r requirements-preloader-initializer.lock" in DOCKERFILE


def test_the_gpu_lock_satisfies_the_preloader_extra_with_the_ci_torch_and_its_cuda_libraries() -> None:
    pins = _pins(GPU_LOCK)
    for requirement in _extra():
        name = requirement.name.lower()
        assert name in pins, f"{name} is missing from {GPU_LOCK.name} (python -m devstack.lock_preloader)"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {requirement.specifier}"
    [ci] = re.findall(r"^torch==(\S+)", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    assert pins["torch"] == ci
    # The default Linux torch wheel's own CUDA libraries are locked too, not left to pip.
    assert {"triton", "nvidia-cublas", "nvidia-cuda-runtime"} <= {re.sub(r"-cu\d+$", "", n) for n in pins}


@pytest.mark.parametrize("left_out", ["torch", "safetensors"])
def test_the_initializer_lock_is_the_extra_less_torch_and_safetensors(left_out: str) -> None:
    pins = _pins(INITIALIZER_LOCK)
    gpu = _pins(GPU_LOCK)
    for requirement in _extra():
        name = requirement.name.lower()
        if name in ("torch", "safetensors"):
            continue
        assert name in pins and requirement.specifier.contains(pins[name]), name
    assert left_out not in pins and not [n for n in pins if n.startswith(("nvidia-", "cuda-"))]
    assert {n: v for n, v in pins.items() if n in gpu} == {n: gpu[n] for n in pins if n in gpu}
    assert set(pins) <= set(gpu), "both images run the same versions of what they share"
