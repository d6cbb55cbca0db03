"""When the cyclic garbage collector runs in a serving process.

CPython's collector pauses the whole process while it walks a generation, and a node with
thousands of sessions holds about a hundred tracked objects per session: left to its own
thresholds, walks of the older generations stopped the server for up to a second under
load, far beyond any message latency it should have. Measured under the benchmark's load,
those walks found no cyclic garbage at all: what a session frees goes by reference
counting. So:

- the young generation is still collected by allocation count, in small steps (a few
  milliseconds at most), which frees short-lived cycles;
- what survives it is frozen every few seconds (an instant operation), never walked by
  the automatic collector again;
- every few hours everything is unfrozen and walked once, so that cycles among long-lived
  objects cannot pile up; the log says how long that took and what it freed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

YOUNG_THRESHOLD = 10_000
# Larger than any count reached between two freezes: never collected by allocation count.
NEVER = 1_000_000_000
FREEZE_EVERY = 5.0
FULL_EVERY = 6 * 3600.0

log = logging.getLogger("parley.gc")


def settle_after_start() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, NEVER, NEVER)


def full_collection() -> int:
    t0 = time.perf_counter()
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    log.info("full collection: %d unreachable objects freed in %.0f ms", found, (time.perf_counter() - t0) * 1000)
    return found


async def collect_on_a_clock(freeze_every: float = FREEZE_EVERY, full_every: float = FULL_EVERY) -> None:
    next_full = time.monotonic() + full_every
    while True:
        await asyncio.sleep(freeze_every)
        if time.monotonic() >= next_full:
            full_collection()
            next_full = time.monotonic() + full_every
        else:
            gc.freeze()
