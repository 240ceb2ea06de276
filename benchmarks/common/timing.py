"""The timing protocol of every benchmark (benchmarks/README.md, "How the timings
are taken"): warm-up calls, then medians of timed calls; networks compared with
each other are called in turns (`time_interleaved`), one call of each per round,
so a slow spell of a shared machine slows all of them alike.
"""

import statistics
import time


def time_calls(fn, warmup, repeats):
    """Runs `fn` (which must block until its result is ready) `warmup` then
    `repeats` times; returns median / min / all timed ms and the first call's ms."""
    first_ms = None
    for i in range(max(warmup, 1)):
        start = time.perf_counter()
        fn()
        if i == 0:
            first_ms = (time.perf_counter() - start) * 1e3
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "ms": statistics.median(times),
        "ms_min": min(times),
        "ms_all": [round(t, 3) for t in times],
        "first_ms": round(first_ms, 3),
    }


def time_interleaved(fns, warmup, repeats, settle=0):
    """Times several callables round-robin: `warmup` calls of each, then
    `repeats` rounds that call each once (the order reversed every other
    round). A slow spell on a shared machine then hits every callable alike,
    so their ratios stay meaningful where back-to-back blocks of calls drift.
    `settle` untimed calls precede each timed one: a training step right after
    the other framework's step ran slower than alone (Keras R50 + ASPP + LDv2
    at 2x128x128, `speed.py --sections train` with and without `--no-torch`);
    the cause (caches, freed memory faulted back in) is not pinned down.

    Returns `({name: time_calls-style stats}, {name: [ms per round]})`.
    """
    first, times = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        for i in range(max(warmup, 1)):
            start = time.perf_counter()
            fn()
            if i == 0:
                first[name] = (time.perf_counter() - start) * 1e3
    names = list(fns)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            for _ in range(settle):
                fns[name]()
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    stats = {
        name: {
            "ms": statistics.median(ts),
            "ms_min": min(ts),
            "ms_all": [round(t, 3) for t in ts],
            "first_ms": round(first[name], 3),
            "interleaved_with": [other for other in names if other != name],
        }
        for name, ts in times.items()
    }
    return stats, times


def paired_ratio(times_a, times_b):
    """Median over rounds of a / b (round i of `time_interleaved` ran both)."""
    return statistics.median(a / b for a, b in zip(times_a, times_b))


def sync_tf(result):
    # Pull every output to the host so that asynchronous execution has finished.
    import tensorflow as tf

    for t in tf.nest.flatten(result):
        if hasattr(t, "numpy"):
            t.numpy()
