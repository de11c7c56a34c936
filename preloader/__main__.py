"""Command line entry: argv + environment -> Config -> preload() -> one JSON line, exit status.

The only place that prints results, configures logging, writes the termination message and
maps domain errors to exit codes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from preloader.config import load_config
from preloader.errors import PreloadError
from preloader.preload import preload
from preloader.result import error_line, result_line, termination_text

log = logging.getLogger("preloader")


def write_termination_log(path: Path, line: str) -> None:
    """Best effort: outside Kubernetes /dev/termination-log usually is not writable."""
    try:
        path.write_text(termination_text(line) + "\n")
    except OSError as exc:
        log.warning("not writing the termination message to %s: %s", path, exc.strerror or exc)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    model = next((a for a in args if a.startswith("s3://")), "")
    termination_log = Path("/dev/termination-log")
    try:
        config = load_config(args, os.environ if env is None else env)
        termination_log = config.termination_log
        logging.getLogger().setLevel(config.log_level)
        # botocore logs request details at DEBUG; keep it quiet even then (no signatures in logs).
        logging.getLogger("botocore").setLevel(logging.WARNING)
        outcome = preload(config)
    except PreloadError as exc:
        log.error("%s: %s", exc.reason, exc)
        line = error_line(model, exc)
        print(line, flush=True)
        write_termination_log(termination_log, line)
        return exc.exit_code
    line = result_line(outcome.result)
    print(line, flush=True)
    write_termination_log(termination_log, line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
