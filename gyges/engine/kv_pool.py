"""KV pages of the devices of one instance: which pages are free, which a sequence holds.

A logical block of a sequence is one page per head group; head group g lives on the device of
rank g // m. Each device keeps its own free list, so page ids differ across ranks.
"""
from gyges.engine.sequence import Sequence
from gyges.memory.layout import units_per_block


class DevicePages:
    """The free KV pages of one device."""

    def __init__(self, pages: list[int], capacity: int | None = None):
        """`capacity`: KV pages the device has with nothing running (default: all of `pages`)."""
        self.free = list(reversed(pages))
        self.capacity = len(pages) if capacity is None else capacity

    def take(self, n: int) -> list[int]:
        if n > len(self.free):
            raise MemoryError(f"asked for {n} pages, {len(self.free)} free")
        taken = self.free[-n:] if n else []
        del self.free[len(self.free) - n:]
        return taken[::-1]

    def give(self, pages: list[int]):
        self.free.extend(reversed(pages))

    @property
    def num_free(self) -> int:
        return len(self.free)

    def free_pages(self) -> list[int]:
        """The free pages in the order `take` hands them out."""
        return self.free[::-1]

    def reserve(self, pages: set[int]):
        """Take these particular free pages off the free list (a transformation's pre-copy targets).
        They are usually the next ones `take` would give, so the search starts at that end."""
        i, missing = len(self.free), len(pages)
        while missing and i:
            i -= 1
            missing -= self.free[i] in pages
        if missing:
            raise ValueError(f"{missing} of the pages to reserve are not free")
        self.free[i:] = [p for p in self.free[i:] if p not in pages]


class KVPool:
    def __init__(self, devices: list[DevicePages], max_tp: int, block_tokens: int):
        self.devices = devices
        self.m = units_per_block(max_tp, len(devices))
        self.max_tp = max_tp
        self.block_tokens = block_tokens

    @property
    def free_blocks(self) -> int:
        return min(d.num_free for d in self.devices) // self.m

    @property
    def total_blocks(self) -> int:
        """Blocks the pool could hold with nothing running (for admission checks)."""
        return min(d.capacity for d in self.devices) // self.m

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
        for r, dev in enumerate(self.devices):
            for g in range(r * self.m, (r + 1) * self.m):
                seq.pages[g].extend(dev.take(n))

    def release(self, seq: Sequence):
        if not seq.pages:
            return
        for r, dev in enumerate(self.devices):
            for g in range(r * self.m, (r + 1) * self.m):
                dev.give(seq.pages[g])
        seq.pages = []
