"""Reading another process's memory: what moves between CPU workers go through."""
import ctypes
import multiprocessing as mp

import numpy as np
import pytest

from gyges.transform import peer_reads
from gyges.transform.peer_reads import IOV_MAX, Run

SIZE = 1 << 20


def yama_forbids() -> bool:
    """Yama's ptrace scope above 0 forbids reading a sibling process: moves then use gloo."""
    try:
        return int(open("/proc/sys/kernel/yama/ptrace_scope").read()) > 0
    except OSError:
        return False


def _hold_pattern(conn):
    """Keep a known pattern in memory until told to go."""
    buf = (np.arange(SIZE, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)
    import os
    conn.send((os.getpid(), buf.ctypes.data))
    conn.recv()


@pytest.fixture
def peer():
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_hold_pattern, args=(there,), daemon=True)
    proc.start()
    pid, address = here.recv()
    yield pid, address
    here.send("go")
    proc.join(10)


def test_reads_runs_from_another_process_in_one_call_per_iov_max(peer):
    pid, address = peer
    if yama_forbids():
        pytest.skip("Yama forbids process_vm_readv between sibling processes here; moves use gloo")
    expect = (np.arange(SIZE, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)
    out = np.zeros(SIZE, dtype=np.uint8)
    n, size = IOV_MAX + 300, 512  # more runs than one call takes, read in reverse order of where they land
    runs = [Run(out.ctypes.data + i * size, address + (n - 1 - i) * size, size) for i in range(n)]
    peer_reads.read(pid, runs)
    got = out[:n * size].reshape(n, size)
    assert np.array_equal(got, expect[:n * size].reshape(n, size)[::-1])
    assert not out[n * size:].any()


def test_a_bad_address_or_process_is_a_clear_error(peer):
    pid, address = peer
    buf = ctypes.create_string_buffer(64)
    with pytest.raises(OSError, match=f"process_vm_readv from pid {pid}: read 0 of 64 bytes"):
        peer_reads.read(pid, [Run(ctypes.addressof(buf), 8, 64)])
    assert "read 0 of 64 bytes" in peer_reads.read_refusal(pid, 8, 64)
    assert "No such process" in peer_reads.read_refusal(2**22 + 12345, address, 64)
