"""The timing the scripts of ``benchmarks/`` share."""
import time

import jax
import numpy as np


def median_ms(fn, *args, calls: int = 15) -> float:
    """Median milliseconds of ``calls`` calls of ``fn(*args)`` after one untimed call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000
