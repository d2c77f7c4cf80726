"""The heap of a long-running process: the Python heap frozen once startup has built it, and freed
C heap handed back to the OS.

A process that imported torch and transformers holds millions of objects; each full (generation 2)
collection walks all of them, a long pause (measured: docs/benchmarks.md, 'Measurements behind code
choices'), and it runs in the middle of whatever allocated last: a step relaunch, a transformation's
plan. Freezing the heap after startup moves those objects out of the collector's sight, so a
collection walks only what the loop created since (vLLM's engine core does the same after start-up).
"""
import ctypes
import gc


def freeze_heap():
    gc.collect()
    gc.freeze()


def trim_heap() -> None:
    """Hand freed heap back to the OS (glibc): dequantized blocks and GGUF metadata leave tens of MB
    that malloc otherwise keeps for the worker's lifetime."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
