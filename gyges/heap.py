"""The Python heap of a long-running loop: frozen once startup has built it.

A process that imported torch and transformers holds millions of objects; each full (generation 2)
collection walks all of them, 30-280 ms measured here, and it runs in the middle of whatever
allocated last: a step relaunch, a transformation's plan. Freezing the heap after startup moves those
objects out of the collector's sight, so a collection walks only what the loop created since
(vLLM's engine core does the same after start-up).
"""
import gc


def freeze_heap():
    gc.collect()
    gc.freeze()
