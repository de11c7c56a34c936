"""Command line entry: argv + environment -> Config -> a run -> one JSON line, exit status.

Three forms: ``preloader URI [flags]`` (the pre-warm Job: onto a device), ``preloader SRC DEST
[flags]`` (KServe's storage initializer: files under DEST, torch never imported) and ``preloader
cache ls|gc`` (inspect or trim a node's cache). The only place that prints results, configures
logging, writes the termination message and maps domain errors to exit codes. Every outcome of a
run, an unexpected exception or Ctrl-C included, ends with one JSON line on stdout and the
termination message: the operator's contract.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from preloader.config import Config, load_config
from preloader.errors import InternalError, Interrupted, PreloadError
from preloader.result import Result, error_line, result_line, termination_text

log = logging.getLogger("preloader")


def write_termination_log(path: Path, line: str) -> None:
    """Best effort: outside Kubernetes /dev/termination-log usually is not writable."""
    try:
        path.write_text(termination_text(line) + "\n")
    except OSError as exc:
        log.warning("not writing the termination message to %s: %s", path, exc.strerror or exc)


def run(config: Config) -> Result:
    """Dispatch on the mode; the Job mode's torch import happens only here, only for it.

    After the imports, every object that exists is moved out of the cyclic garbage collector's
    sight (``gc.freeze``): torch's hundreds of thousands of module objects were otherwise rescanned
    by every full collection the transfer's allocations trigger, about a seventh of a 2 GiB pull's
    CPU time in a profile. Nothing of the run itself is exempted.
    """
    if config.dest is not None:
        from preloader.initializer import initialize

        with frozen_heap():
            return initialize(config)
    if config.device == "none":
        from preloader.warm import warm  # the cache only: torch is never imported

        with frozen_heap():
            return warm(config)
    from preloader.preload import preload

    with frozen_heap():
        return preload(config).result


@contextmanager
def frozen_heap() -> Iterator[None]:
    """gc.freeze for the run, undone after it (main() also runs inside test processes)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def quiet_blas_threads() -> None:
    """numpy's OpenBLAS starts a pool of threads that spin for work the preloader never gives them
    (no linear algebra here): 4% of a 2 GiB pull's CPU in a profile. One thread, set before numpy
    is first imported, unless the caller chose otherwise."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    quiet_blas_threads()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if env is None else env
    if args[:1] == ["cache"]:
        from preloader.cache_cli import cache_main

        try:
            return cache_main(args[1:], environ, sys.stdout)
        except PreloadError as exc:
            log.error("%s: %s", exc.reason, exc)
            return exc.exit_code
    model = next((a for a in args if a.startswith("s3://")), "")
    termination_log = Path("/dev/termination-log")
    try:
        config = load_config(args, environ)
        termination_log = config.termination_log
        logging.getLogger().setLevel(config.log_level)
        # botocore logs request details at DEBUG; keep it quiet even then (no signatures in logs).
        logging.getLogger("botocore").setLevel(logging.WARNING)
        result = run(config)
    except PreloadError as exc:
        log.error("%s: %s", exc.reason, exc)
        return _fail(model, exc, termination_log)
    except KeyboardInterrupt:
        log.error("interrupted")
        return _fail(model, Interrupted("interrupted (SIGINT)"), termination_log)
    except Exception as exc:  # a bug, a torch RuntimeError, MemoryError: still honour the output contract
        log.exception("internal error")
        return _fail(model, InternalError(f"{type(exc).__name__}: {exc}"), termination_log)
    line = result_line(result)
    print(line, flush=True)
    write_termination_log(termination_log, line)
    return 0


def _fail(model: str, error: PreloadError, termination_log: Path) -> int:
    line = error_line(model, error)
    print(line, flush=True)
    write_termination_log(termination_log, line)
    return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
