"""All-reduce through shared memory, for the CPU workers of one host (shm_allreduce.c).

gloo's all-reduce goes through TCP loopback: slow, and a step makes two per layer, which made TP2
and TP4 much slower than TP1 and a merge's first steps slow (measured: docs/benchmarks.md,
'Measurements behind code choices').
The controller creates one segment per aligned group before the workers start and removes the
files once they have mapped them; the mappings live as long as the workers. Segments are private
(O_EXCL, O_NOFOLLOW, mode 0600) under names with the controller's pid and a random part; those of
controllers no longer alive (killed before removing theirs) are removed at the next start.
"""
import mmap
import os
import secrets
import stat
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


def segment_prefix() -> str:
    """Names no other process can guess: gyges-<this controller's pid>-<random>."""
    return f"gyges-{os.getpid()}-{secrets.token_hex(8)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_segments():
    """Remove this user's segments whose controller is no longer alive (killed before removing them)."""
    for path in SHM_DIR.glob("gyges-*"):
        pid = path.name.split("-")[1]
        try:
            if pid.isdigit() and not _alive(int(pid)) and path.lstat().st_uid == os.getuid():
                path.unlink()
        except OSError:
            pass  # gone meanwhile, or not ours to remove


def create_segments(prefix: str, groups: list[tuple[int, int]], slot_bytes: int) -> bool:
    """Zeroed private segment files for `groups` ((start, size) each); False where shared memory or
    the kernel is missing, or a name is taken."""
    if library() is None or not SHM_DIR.is_dir():
        return False
    remove_stale_segments()
    created = []
    try:
        for start, size in groups:
            path = segment_path(prefix, start, size)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            created.append((start, size))
            try:
                os.ftruncate(fd, segment_bytes(size, slot_bytes))
            finally:
                os.close(fd)
    except OSError:
        remove_segments(prefix, created)  # never one this call did not create
        return False
    return True


def remove_segments(prefix: str, groups: list[tuple[int, int]]):
    for start, size in groups:
        segment_path(prefix, start, size).unlink(missing_ok=True)


class ShmAllReduce:
    """Rank `rank` of the group of `size` devices whose segment is at `path`."""

    def __init__(self, path: Path, size: int, rank: int, slot_bytes: int, timeout_s: float = TIMEOUT_S):
        self.size, self.rank, self.slot_bytes, self.timeout_s = size, rank, slot_bytes, timeout_s
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
                raise PermissionError(f"{path} is not a private segment of this user")
            self.mm = mmap.mmap(fd, segment_bytes(size, slot_bytes))
        finally:
            os.close(fd)
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
