"""What a parked greenlet costs: resident memory, malloc heap and saved C stack per greenlet.

Every idle connection of a gevent server keeps one greenlet parked in a wait. This spawns
``--count`` greenlets that call ``--depths`` nested Python functions and then park (in an
``Event.wait()``, or by a plain switch to the hub as gnetserver's waits do), and
prints, per greenlet, the growth of VmRSS, of the malloc heap (``mallinfo2``) and the size of
the C stack slice greenlet copied to the heap (``_stack_saved``)::

    python bench/parked_greenlets.py                      # the three kinds, depths 1, 13, 40
    python bench/parked_greenlets.py --count 1000 --depths 1

What is in RSS but not in the malloc heap is mostly Python's frame data stack: on Python 3.11+
each greenlet gets its own 16 KiB chunk (an mmap) at its first Python call, of which the
touched 4 KiB pages are resident.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # servers beside this file

from servers import malloc_in_use  # noqa: E402


def _rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


KINDS = {
    "gevent-event": "gevent.spawn, parked in Event.wait()",
    "gevent": "gevent.spawn, parked by hub.switch() (as gnetserver's Waits)",
    "raw": "raw greenlet.greenlet, parked by hub.switch()",
}


def measure(kind: str, count: int, depth: int) -> tuple[float, float, float]:
    """(RSS, malloc heap, saved C stack) in bytes per parked greenlet."""
    import gevent
    import greenlet
    from gevent.event import Event

    event = Event()
    hub = gevent.get_hub()

    def nest(left: int) -> None:
        if left > 1:
            return nest(left - 1)
        if kind == "gevent-event":
            event.wait()
        else:  # as gnetserver's Waits park: straight to the hub, no Waiter
            hub.switch()
        return None

    def spawn(n: int) -> list[Any]:
        if kind.startswith("gevent"):
            return [gevent.spawn(nest, depth) for _ in range(n)]
        made = [greenlet.greenlet(nest, parent=hub) for _ in range(n)]
        for g in made:
            hub.loop.run_callback(g.switch, depth)
        return made

    spawn(100)  # warm-up: lazy allocations of the first greenlets
    gevent.sleep(0.1)
    gc.collect()
    rss, heap = _rss_kb(), malloc_in_use()
    parked = spawn(count)
    gevent.sleep(0.5)
    gc.collect()
    saved = sum(g._stack_saved for g in parked) / count
    return (_rss_kb() - rss) * 1024 / count, (malloc_in_use() - heap) / count, saved


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="greenlets (5000)")
    parser.add_argument("--depths", default="1,13,40", help="nested Python calls (1,13,40)")
    args = parser.parse_args()
    import multiprocessing

    print("| parked greenlet | depth | RSS (B) | malloc heap (B) | saved C stack (B) |")
    print("|---|---:|---:|---:|---:|")
    with multiprocessing.Pool(1, maxtasksperchild=1) as pool:  # a fresh process each
        for kind, label in KINDS.items():
            for depth in (int(d) for d in args.depths.split(",")):
                rss, heap, saved = pool.apply(measure, (kind, args.count, depth))
                print(f"| {label} | {depth} | {rss:,.0f} | {heap:,.0f} | {saved:,.0f} |")


if __name__ == "__main__":
    main()
