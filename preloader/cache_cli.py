"""``python -m preloader cache ls|gc``: see and trim a node's cache by hand.

``ls`` prints one line per cached version (or ``--json``): last use, size, complete or not,
whether it is the location's current version, the model URI and version. ``gc`` removes
unfinished entries and then least recently used ones until the cache is under ``--max-bytes``,
skipping any entry a running preloader or initializer holds a lease on.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from preloader.cache import EntryInfo, ModelCache
from preloader.config import parse_size
from preloader.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="preloader cache", description="Inspect or trim the node-local model cache.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("ls", "list cached model versions, least recently used first"), ("gc", "remove entries")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--cache-dir", type=Path, default=None, help="the cache (or PRELOADER_CACHE_DIR)")
        command.add_argument("--json", action="store_true", help="one JSON object per line")
        if name == "gc":
            command.add_argument(
                "--max-bytes",
                default=None,
                help="evict least recently used versions until the cache is this small "
                "(default PRELOADER_CACHE_MAX_BYTES; without either, only unfinished entries are removed)",
            )
    return parser


def _line(entry: EntryInfo, as_json: bool) -> str:
    if as_json:
        return json.dumps({**asdict(entry), "path": str(entry.path)}, separators=(",", ":"))
    used = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.last_used))
    state = ("current" if entry.current else "old") if entry.complete else "unfinished"
    return f"{used}  {entry.bytes:>14}  {state:<10}  {entry.uri}  {entry.model_version}  {entry.path}"


def cache_main(argv: Sequence[str], env: Mapping[str, str], out: TextIO) -> int:
    args = build_parser().parse_args(list(argv))
    root = args.cache_dir or (Path(env["PRELOADER_CACHE_DIR"]) if env.get("PRELOADER_CACHE_DIR") else None)
    if root is None:
        raise UsageError("give --cache-dir (or set PRELOADER_CACHE_DIR)")
    if not os.path.isdir(root):
        raise UsageError(f"{root} is not a directory")
    cache = ModelCache(root)
    if args.command == "ls":
        entries = cache.entries()
        for entry in entries:
            print(_line(entry, args.json), file=out)
        if not args.json:
            print(
                f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {sum(e.bytes for e in entries)} bytes",
                file=out,
            )
        return 0
    text = args.max_bytes or env.get("PRELOADER_CACHE_MAX_BYTES")
    removed = cache.gc(parse_size(text) if text else None)
    for entry in removed:
        print(("removed " if not args.json else "") + _line(entry, args.json), file=out)
    left = cache.entries()
    if not args.json:
        print(f"removed {len(removed)}, {len(left)} left, {sum(e.bytes for e in left)} bytes", file=out)
    return 0
