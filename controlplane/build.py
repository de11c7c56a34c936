"""Build kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd from their Go modules.

`make controlplane` runs this. The binaries go to a cache folder outside the checkout
(``$CONTROLPLANE_CACHE``, default ``~/.cache/kserve-operator/controlplane``), one subfolder
per build key: the Kubernetes and etcd versions, a hash of both modules' go.mod/go.sum, the Go
version and the build flags. A key that is already built is reused as it is; the Go module and
build caches (``go env GOMODCACHE GOCACHE``) are kept by Go itself, so a rebuild after a small
change links again but compiles little. The last line printed is the folder holding the binaries:
scripts and the tests rely on it.

The four Kubernetes commands are built in one ``go build`` invocation: the packages they share
are compiled once, and the five links run in parallel with the compiles of the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KUBERNETES_MODULE = HERE / "kubernetes"
ETCD_MODULE = HERE / "etcd"
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
BINARIES = (*KUBE_COMMANDS, "etcd")
GO_FLAGS = ("-trimpath",)
STAMP = "built.json"


class BuildError(Exception):
    """A one-line reason the build cannot go on, and what to do about it."""


def required_version(module_dir: Path, module: str) -> str:
    """The version of ``module`` that a wrapper module's go.mod requires."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", (module_dir / "go.mod").read_text(), re.M)
    if match is None:
        raise BuildError(f"{module_dir / 'go.mod'} does not require {module}")
    return match.group(1)


def go_version() -> str:
    if shutil.which("go") is None:
        raise BuildError("no Go toolchain on PATH: install Go 1.26 or newer (https://go.dev/doc/install), "
                         "then run `make controlplane` again")
    return subprocess.run(["go", "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()


def build_key(kubernetes: str, etcd: str, go: str) -> str:
    digest = hashlib.sha256()
    for path in (KUBERNETES_MODULE / "go.mod", KUBERNETES_MODULE / "go.sum", ETCD_MODULE / "go.mod",
                 ETCD_MODULE / "go.sum"):
        digest.update(path.read_bytes())
    digest.update(" ".join((go, *GO_FLAGS, *ldflags(kubernetes))).encode())
    return f"k8s-{kubernetes}-etcd-{etcd}-{digest.hexdigest()[:10]}"


def ldflags(kubernetes: str) -> list[str]:
    """Version stamps, so ``/version`` and ``kubectl version`` say the release instead of v0.0.0."""
    major, minor = kubernetes.removeprefix("v").split(".")[:2]
    stamps = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        stamps += [f"-X {package}.gitVersion={kubernetes}", f"-X {package}.gitMajor={major}",
                   f"-X {package}.gitMinor={minor}", f"-X {package}.gitTreeState=clean"]
    return ["-s", "-w", *stamps]


def cache_root() -> Path:
    configured = os.environ.get("CONTROLPLANE_CACHE")
    if configured:
        return Path(configured).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kserve-operator" / "controlplane"


def is_built(folder: Path) -> bool:
    return (folder / STAMP).is_file() and all(os.access(folder / name, os.X_OK) for name in BINARIES)


def go_build(module_dir: Path, out: Path, packages: list[str], flags: list[str], what: str) -> float:
    """One ``go build -o out/ pkg...``; its output streams through; a failure names the step."""
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": os.environ.get("GOFLAGS", "-buildvcs=false")}
    started = time.monotonic()
    command = ["go", "build", *GO_FLAGS, "-ldflags", " ".join(flags), "-o", f"{out}/", *packages]
    print(f"controlplane: building {what} ...", file=sys.stderr, flush=True)
    result = subprocess.run(command, cwd=module_dir, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if result.returncode != 0:
        raise BuildError(f"`go build` of {what} failed (exit {result.returncode}, output above): if it could not "
                         "download a module, check that the Go module proxy is reachable (GOPROXY) and run "
                         "`make controlplane` again")
    return time.monotonic() - started


def build(root: Path) -> Path:
    go = go_version()
    kubernetes = required_version(KUBERNETES_MODULE, "k8s.io/kubernetes")
    etcd = required_version(ETCD_MODULE, "go.etcd.io/etcd/server/v3")
    folder = root / build_key(kubernetes, etcd, go)
    if is_built(folder):
        print(f"controlplane: reusing {folder.name}", file=sys.stderr)
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    seconds = {
        "kubernetes": go_build(KUBERNETES_MODULE, partial, [f"k8s.io/kubernetes/cmd/{name}" for name in KUBE_COMMANDS],
                               ldflags(kubernetes), f"Kubernetes {kubernetes} ({', '.join(KUBE_COMMANDS)})"),
        "etcd": go_build(ETCD_MODULE, partial, ["go.etcd.io/etcd/server/v3"], ["-s", "-w"], f"etcd {etcd}"),
    }
    # `go build -o dir/` names a binary after its package path, the /v3 suffix dropped: "server".
    (partial / "server").rename(partial / "etcd")
    (partial / STAMP).write_text(json.dumps({"kubernetes": kubernetes, "etcd": etcd, "go": go,
                                             "seconds": {k: round(v, 1) for k, v in seconds.items()}}) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    print(f"controlplane: built in {sum(seconds.values()):.0f} s "
          f"(Kubernetes {seconds['kubernetes']:.0f} s, etcd {seconds['etcd']:.0f} s)", file=sys.stderr)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: $CONTROLPLANE_CACHE "
                        "or ~/.cache/kserve-operator/controlplane)")
    args = parser.parse_args(argv)
    try:
        folder = build(args.cache or cache_root())
    except BuildError as exc:
        print(f"controlplane: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
