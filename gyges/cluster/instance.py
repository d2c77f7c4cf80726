"""The instances of one host: which devices serve together, each with its scheduler and KV pool.

An instance is asked what a transformation needs (`gyges.transform.coordinator.Member`) through its
methods; its scheduler and pool stay its own.
"""
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from gyges.engine.kv_pool import DevicePages, KVPool
from gyges.engine.scheduler import Scheduler
from gyges.engine.sequence import Sequence
from gyges.memory.layout import DeviceLayout
from gyges.transform.plan import kv_page_order


@dataclass(eq=False)
class Instance:
    devices: list[int]
    scheduler: Scheduler
    pool: KVPool
    formed_at: float = 0.0
    stepping: bool = False  # a step in flight
    # formed by a transformation and not stepped yet: its first step is the one the requests that ran
    # through the switch wait for, so it admits no new request (those held for a merge join one step later)
    carried: bool = False
    launched: float = 0.0   # when its step in flight was launched
    step_s: float = 0.0     # how long its last step took (a stretch: per step)
    draining: bool = False  # admits no new request, so that it can split (the policy's SetDraining)

    @property
    def tp(self) -> int:
        return len(self.devices)

    @property
    def id(self) -> int:
        return self.devices[0]

    # what a transformation asks (gyges.transform.coordinator.Member)

    def running(self) -> list[Sequence]:
        return self.scheduler.running

    def waiting(self) -> list[Sequence]:
        return list(self.scheduler.waiting)

    def free_pages(self) -> dict[int, np.ndarray]:
        return self.pool.free_pages()

    def reserve(self, pages: dict[int, np.ndarray]):
        self.pool.reserve(pages)

    def give_back(self, pages: dict[int, np.ndarray]):
        self.pool.give_back(pages)

    def adopt(self, seq: Sequence):
        self.scheduler.adopt_running(seq)

    def add(self, seq: Sequence):
        self.scheduler.add(seq)

    def load_tokens(self) -> int:
        return self.scheduler.load_tokens


@dataclass(frozen=True)
class SchedulerLimits:
    max_tp: int
    block_tokens: int
    max_num_seqs: int
    max_batched_tokens: int
    long_prefill_tokens: int = 0


class Instances:
    """The instances in device order, and how new ones are built (`build`)."""

    def __init__(self, layout: DeviceLayout, limits: SchedulerLimits, clock: Callable[[], float], sizes: list[int]):
        self.layout, self.limits, self.clock = layout, limits, clock
        self.all: list[Instance] = []
        self.reset(sizes)

    def build(self, devices: list[int], free: dict[int, np.ndarray] | None = None) -> Instance:
        """An instance on `devices` (rank order); `free`: each device's free KV pages (default: all)."""
        tp, lay, lim = len(devices), self.layout, self.limits
        pages = [DevicePages(kv_page_order(lay, lay.free_pages(tp, r) if free is None else free[d]), lay.kv_capacity(tp))
                 for r, d in enumerate(devices)]
        pool = KVPool(devices, pages, lim.max_tp, lim.block_tokens)
        sched = Scheduler(pool, lim.max_num_seqs, lim.max_batched_tokens, lim.long_prefill_tokens)
        return Instance(list(devices), sched, pool, formed_at=self.clock())

    def reset(self, sizes: list[int]):
        """Empty instances laid out as `sizes` in device order (ranks: `DeviceLayout.rank_order`)."""
        self.all, start = [], 0
        for s in sizes:
            self.all.append(self.build(self.layout.rank_order(list(range(start, start + s)))))
            start += s

    def replace(self, old: list[Instance], new: list[Instance]):
        self.all = sorted([i for i in self.all if i not in old] + new, key=lambda i: i.id)

    def of(self, device: int) -> Instance:
        return next(i for i in self.all if device in i.devices)

    @property
    def sizes(self) -> list[int]:
        return [i.tp for i in self.all]

    def requests(self) -> list[Sequence]:
        return [s for i in self.all for s in i.scheduler.requests]

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.all)

    def __len__(self) -> int:
        return len(self.all)
