"""All-reduce through shared memory, for the CPU workers of one host (shm_allreduce.c).

gloo's all-reduce goes through TCP loopback: about 5 ms with 4 processes on 2 cores, two per
layer, which made TP2 and TP4 several times slower than TP1 here and a merge's first steps slow.
The controller creates one segment per aligned group before the workers start and removes the
files once they have mapped them; the mappings live as long as the workers.
"""
import mmap
import os
from pathlib import Path

import torch

from gyges.kernels.build import library

SHM_DIR = Path("/dev/shm")
COUNTER_BYTES = 64
TIMEOUT_S = 120.0


def segment_bytes(size: int, slot_bytes: int) -> int:
    return size * COUNTER_BYTES + 2 * size * slot_bytes


def segment_path(prefix: str, start: int, size: int) -> Path:
    return SHM_DIR / f"{prefix}-{start}-{size}"


def create_segments(prefix: str, groups: list[tuple[int, int]], slot_bytes: int) -> bool:
    """Zeroed segment files for `groups` ((start, size) each); False where shared memory is missing."""
    if library() is None or not SHM_DIR.is_dir():
        return False
    try:
        for start, size in groups:
            with open(segment_path(prefix, start, size), "wb") as f:
                f.truncate(segment_bytes(size, slot_bytes))
    except OSError:
        remove_segments(prefix, groups)
        return False
    return True


def remove_segments(prefix: str, groups: list[tuple[int, int]]):
    for start, size in groups:
        segment_path(prefix, start, size).unlink(missing_ok=True)


class ShmAllReduce:
    """Rank `rank` of the group of `size` devices whose segment is at `path`."""

    def __init__(self, path: Path, size: int, rank: int, slot_bytes: int, timeout_s: float = TIMEOUT_S):
        self.size, self.rank, self.slot_bytes, self.timeout_s = size, rank, slot_bytes, timeout_s
        with open(path, "r+b") as f:
            self.mm = mmap.mmap(f.fileno(), segment_bytes(size, slot_bytes))
        self.base = torch.frombuffer(self.mm, dtype=torch.uint8)
        self.seq = 0

    def handles(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.is_contiguous()
                and x.numel() * x.element_size() <= self.slot_bytes)

    def all_reduce(self, x: torch.Tensor):
        """Sum x over the group, in place; every rank must call with the same shape, in the same order."""
        self.seq += 1
        rc = library().shm_all_reduce(self.base.data_ptr(), self.size, self.rank, self.slot_bytes, self.seq,
                                      x.data_ptr(), x.numel(), x.dtype == torch.bfloat16, self.timeout_s)
        if rc != 0:
            raise RuntimeError(f"shared-memory all-reduce: a peer did not arrive within {self.timeout_s:g} s")
