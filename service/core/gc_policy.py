"""The garbage collector of a serving process: frozen start-up heap, young-generation sizes.

A request to berth allocates thousands of container objects and frees them all by reference
counting: the cyclic collector finds nothing to collect under load (measured with
`gc.callbacks`, docs/benchmarks.md), so each of its passes is pure cost, paid in the event
loop between requests. `apply_gc_policy` runs at the end of start-up (the lifespan, in every
worker) with `BERTH_GC__*` (`GcSettings`).
"""

from __future__ import annotations

import gc

from service.core.config import GcSettings


def apply_gc_policy(settings: GcSettings) -> None:
    """Freeze what start-up built (after collecting its garbage) and set the thresholds."""
    if settings.freeze_after_startup:
        gc.collect()
        gc.freeze()
    gc.set_threshold(settings.gen0_threshold, settings.gen1_threshold, settings.gen2_threshold)
