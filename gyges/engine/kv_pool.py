"""KV pages of the devices of one instance: which pages are free, which a sequence holds.

A logical block of a sequence is one page per head group; head group g lives on the device of
rank g // m. Each device keeps its own free list, so page ids differ across ranks.
"""
import numpy as np

from gyges.engine.sequence import Sequence
from gyges.memory.layout import units_per_block


class DevicePages:
    """The free KV pages of one device: a stack in a numpy array, so that a transformation reads and
    rewrites tens of thousands of free pages without a Python loop over them."""

    def __init__(self, pages, capacity: int | None = None):
        """`pages`: in the order `take` hands them out; `capacity`: KV pages the device has with
        nothing running (default: all of `pages`)."""
        order = np.asarray(pages, dtype=np.int64).reshape(-1)
        self._stack = order[::-1].copy()   # the next page to take is on top
        self._top = len(order)
        self.capacity = len(order) if capacity is None else capacity

    def take(self, n: int) -> list[int]:
        if n > self._top:
            raise MemoryError(f"asked for {n} pages, {self._top} free")
        self._top -= n
        return self._stack[self._top:self._top + n][::-1].tolist()

    def give(self, pages):
        n = len(pages)
        if self._top + n > len(self._stack):
            self._stack = np.concatenate([self._stack[:self._top], np.empty(max(n, self._top), np.int64)])
        self._stack[self._top:self._top + n] = np.asarray(pages, dtype=np.int64)[::-1]
        self._top += n

    @property
    def num_free(self) -> int:
        return self._top

    def free_pages(self) -> np.ndarray:
        """The free pages in the order `take` hands them out (a copy)."""
        return self._stack[:self._top][::-1].copy()

    def reserve(self, pages):
        """Take these particular free pages (distinct) off the free list (a transformation's pre-copy targets)."""
        pages = np.asarray(pages, dtype=np.int64).reshape(-1)
        if not len(pages):
            return
        live = self._stack[:self._top]
        hit = np.isin(live, pages)
        found = int(hit.sum())
        if found != len(pages):
            why = "are not free" if found < len(pages) else "are listed as free more than once"
            raise ValueError(f"{abs(len(pages) - found)} of the pages to reserve {why}")
        kept = live[~hit]
        self._stack[:len(kept)] = kept
        self._top = len(kept)


class KVPool:
    """The pages of an instance's devices (rank order); a transformation asks for free pages and
    reserves or gives back particular ones, by device."""

    def __init__(self, devices: list[int], pages: list[DevicePages], max_tp: int, block_tokens: int):
        self.devices = list(devices)
        self.pages = pages
        self.m = units_per_block(max_tp, len(pages))
        self.max_tp = max_tp
        self.block_tokens = block_tokens

    def free_pages(self) -> dict[int, np.ndarray]:
        """Each device's free pages, in the order they are handed out."""
        return {d: pages.free_pages() for d, pages in zip(self.devices, self.pages)}

    def reserve(self, pages: dict[int, np.ndarray]):
        """Take these free pages of each device off its free list (a transformation's destinations)."""
        for d, dev in zip(self.devices, self.pages):
            dev.reserve(pages[d])

    def give_back(self, pages: dict[int, np.ndarray]):
        """Return reserved pages of each device to its free list."""
        for d, dev in zip(self.devices, self.pages):
            dev.give(pages[d])

    def usage(self) -> dict[int, float]:
        """Each device's fraction of KV pages in use."""
        return {d: 1.0 - p.num_free / p.capacity if p.capacity else 0.0 for d, p in zip(self.devices, self.pages)}

    @property
    def free_blocks(self) -> int:
        return min(p.num_free for p in self.pages) // self.m

    @property
    def total_blocks(self) -> int:
        """Blocks the pool could hold with nothing running (for admission checks)."""
        return min(p.capacity for p in self.pages) // self.m

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def can_grow(self, seq: Sequence, tokens: int) -> bool:
        return self.blocks_for(tokens) - seq.num_blocks <= self.free_blocks

    def grow(self, seq: Sequence, tokens: int):
        """Give `seq` enough blocks to hold `tokens` tokens."""
        n = self.blocks_for(tokens) - seq.num_blocks
        if n <= 0:
            return
        if not seq.pages:
            seq.pages = [[] for _ in range(self.max_tp)]
        for r, dev in enumerate(self.pages):
            for g in range(r * self.m, (r + 1) * self.m):
                seq.pages[g].extend(dev.take(n))

    def release(self, seq: Sequence):
        if not seq.pages:
            return
        for r, dev in enumerate(self.pages):
            for g in range(r * self.m, (r + 1) * self.m):
                dev.give(seq.pages[g])
        seq.pages = []
