"""The shared-memory all-reduce between real processes: the exact sum, the same bits on every rank,
an error (not a hang) when a peer never arrives, private segments, and none left behind by a
cluster or by a controller that was killed."""
import multiprocessing
import os
import stat

import pytest
import torch

from gyges.cluster.cluster import Cluster
from gyges.cluster.config import ClusterConfig
from gyges.kernels.build import library
from gyges.kernels.shm_allreduce import (SHM_DIR, ShmAllReduce, create_segments, remove_segments,
                                         remove_stale_segments, segment_path, segment_prefix)
from tests.worker.extension import TestingWorker, UsesShm

needs_kernels = pytest.mark.skipif(library() is None, reason="needs gcc and a CPU with AVX512-BF16")
CASES = [(torch.float32, 37), (torch.bfloat16, 1000), (torch.bfloat16, 32 * 576), (torch.float32, 4096)]
SLOT = 32 * 576 * 4


def _inputs(rank: int, dtype: torch.dtype, n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(rank * 1000 + n)).to(dtype)


def _rank_main(rank: int, size: int, prefix: str, out):
    comm = ShmAllReduce(segment_path(prefix, 0, size), size, rank, SLOT)
    results = []
    for _ in range(3):  # several rounds: both slot sets are reused
        for dtype, n in CASES:
            x = _inputs(rank, dtype, n)
            comm.all_reduce(x)
            results.append(x.float().numpy())
    out.put((rank, results))


@needs_kernels
@pytest.mark.parametrize("size", [2, 4])
def test_sum_is_exact_and_identical_on_every_rank(size):
    prefix = f"gyges-test-{os.getpid()}"
    assert create_segments(prefix, [(0, size)], SLOT)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, size, prefix, out)) for r in range(size)]
    try:
        for p in procs:
            p.start()
        results = dict(out.get(timeout=120) for _ in range(size))
    finally:
        for p in procs:
            p.join(10)
        remove_segments(prefix, [(0, size)])
    for k, (dtype, n) in enumerate(CASES * 3):
        exact = sum(_inputs(r, dtype, n).float() for r in range(size))  # rank order, fp32, as the kernel
        got = torch.from_numpy(results[0][k])
        assert torch.equal(got, exact.to(dtype).float())
        assert all((results[r][k] == results[0][k]).all() for r in range(size))


@needs_kernels
def test_missing_peer_raises_instead_of_hanging():
    prefix = f"gyges-test-{os.getpid()}-alone"
    assert create_segments(prefix, [(0, 2)], SLOT)
    try:
        comm = ShmAllReduce(segment_path(prefix, 0, 2), 2, 0, SLOT, timeout_s=0.2)
        with pytest.raises(RuntimeError, match="did not arrive"):
            comm.all_reduce(torch.ones(8))
    finally:
        remove_segments(prefix, [(0, 2)])


@needs_kernels
def test_cluster_removes_its_segment_files(tiny_llama):
    before = set(SHM_DIR.iterdir())
    cfg = ClusterConfig(model=str(tiny_llama), devices=2, tp=2, dtype="float32", device_memory="32MiB", block_tokens=4)
    with Cluster(cfg, worker_class=TestingWorker) as cluster:
        assert not [p for p in set(SHM_DIR.iterdir()) - before if p.name.startswith("gyges-")]
        assert cluster.workers[0].call(UsesShm())
    assert not [p for p in set(SHM_DIR.iterdir()) - before if p.name.startswith("gyges-")]


@needs_kernels
def test_segments_are_private_and_never_reused():
    prefix = segment_prefix()
    assert prefix.startswith(f"gyges-{os.getpid()}-") and len(prefix.split("-")[2]) == 16
    assert create_segments(prefix, [(0, 2)], SLOT)
    try:
        path = segment_path(prefix, 0, 2)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert not create_segments(prefix, [(0, 2)], SLOT)  # O_EXCL: a taken name is refused...
        assert path.exists()  # ...and the segment that holds it is left alone
    finally:
        remove_segments(prefix, [(0, 2)])


def _dead_pid() -> int:
    p = multiprocessing.get_context("spawn").Process(target=int)
    p.start()
    p.join()
    return p.pid


def test_segments_of_controllers_no_longer_alive_are_removed():
    dead = SHM_DIR / f"gyges-{_dead_pid()}-0123456789abcdef-0-2"
    alive = SHM_DIR / f"gyges-{os.getpid()}-0123456789abcdef-0-2"
    for p in (dead, alive):
        p.write_bytes(b"")
    try:
        remove_stale_segments()
        assert not dead.exists() and alive.exists()
    finally:
        for p in (dead, alive):
            p.unlink(missing_ok=True)
