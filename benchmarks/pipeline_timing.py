"""Timing input pipelines side by side: the same measurement for every pipeline benchmark."""

import gc
import time
from collections.abc import Callable

import numpy as np


def rate(iterator, batches: int, batch: int) -> tuple[float, float]:
    """Images per second of wall time, and per second of this process's CPU time (which other
    processes on shared cores disturb far less)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        out = next(iterator)
    # A batch: a dict with "image", an (images, labels) tuple, or the images alone.
    image = out["image"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out
    assert image.dtype == np.uint8 and len(image) == batch
    images = batches * batch
    return images / (time.perf_counter() - wall), images / (time.process_time() - cpu)


def measure(builders: dict[str, Callable], rounds: int, batches: int,
            batch: int) -> dict[str, list[tuple[float, float]]]:
    """`rate`s of each pipeline (`builders[name]()` makes a fresh iterator) over `rounds`
    rounds, the order alternating between rounds."""
    rates = {name: [] for name in builders}
    for round_ in range(rounds):
        # Each measurement runs alone: a fresh pipeline, warmed up (graph building, thread pools,
        # buffers), timed, then closed so that its threads cannot compete with the next one.
        names = list(builders) if round_ % 2 == 0 else list(builders)[::-1]
        for name in names:
            iterator = builders[name]()
            rate(iterator, 2, batch)
            rates[name].append(rate(iterator, batches, batch))
            if hasattr(iterator, "close"):
                iterator.close()
            del iterator
            gc.collect()
    return rates
