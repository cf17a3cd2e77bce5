"""The cyclic garbage collector, tuned for a long-running gateway process.

A gateway request allocates a few hundred container objects, nearly all freed
by reference counting as soon as the request ends; the cyclic collector only
matters for the rare cycle. With CPython's default thresholds (700, 10, 10) a
gateway at a few thousand requests a second runs a young collection every
request or two and a full one every few seconds, and each full collection
walks everything loaded at start-up (price catalog, config, modules): about
12 µs of every request's CPU went to the collector in the issue 14 profile
(docs/benchmarks.md). So, once the server is up:

* ``gc.freeze()`` moves everything that exists at start-up to the permanent
  generation, which collections never walk;
* the young-generation threshold goes to 10,000 allocations, so the fixed cost
  of a collection is paid ~14× less often. Garbage that only the collector can
  free waits a little longer; the memory it holds is bounded by the threshold.

Only ``tokenfuse serve`` (and each worker) calls :func:`enable`: tests and the
demo run gateways inside a process whose objects are not theirs to freeze.
A config reload replaces objects that were frozen, so :func:`after_reload`
unfreezes, collects once and freezes again; a reload is rare and its pause
(a full collection, tens of milliseconds) is paid once.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
OLDER_THRESHOLDS = (50, 1_000)

_enabled = False


def enable() -> None:
    """Freeze what start-up built and space collections out (call once, from the serving process)."""
    global _enabled
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    _enabled = True


def after_reload() -> None:
    """Let the collector see the objects a reload replaced, then freeze the new set."""
    if not _enabled:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
