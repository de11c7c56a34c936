"""The JSON result's phases say where the time went: waiting for bytes is the download's time."""

from __future__ import annotations

import threading
import time
from pathlib import PurePosixPath

import torch
from safetensors.torch import save

from preloader.plan import ByteRange, ModelFile, ObjectInfo
from preloader.preload import _load_file, _Timings
from preloader.transfer import FileBuffer, host_allocate

ARRIVAL_DELAY = 0.5


def test_waiting_for_the_header_is_not_counted_as_deserialising() -> None:
    """The header's bytes arrive half a second late; parsing itself takes a few milliseconds."""
    data = save({"w": torch.arange(1024, dtype=torch.float32)})
    obj = ObjectInfo("m/model.safetensors", len(data), '"etag"')
    file = ModelFile(obj, PurePosixPath("model.safetensors"))
    buf = FileBuffer(file, [ByteRange(0, len(data) - 1)], host_allocate)
    buf.buffer()[:] = data

    def arrive() -> None:
        time.sleep(ARRIVAL_DELAY)
        buf.part_done(0)
        buf.complete()

    threading.Thread(target=arrive).start()
    timings = _Timings()
    start = time.perf_counter()
    tensors = _load_file(buf, torch.device("cpu"), timings)
    elapsed = time.perf_counter() - start

    assert torch.equal(tensors["w"], torch.arange(1024, dtype=torch.float32))
    assert elapsed >= ARRIVAL_DELAY
    assert timings.deserialise < ARRIVAL_DELAY / 2, timings
