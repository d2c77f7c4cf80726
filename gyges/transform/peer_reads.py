"""Copy from another worker's memory in one step (Linux cross-memory attach, `process_vm_readv`).

On a CPU host every device is a process on the same machine. gloo's send/recv carries a page run
through two loopback sockets; reading it straight out of the peer's arena into our own is one
memcpy, with no staging buffer, and much faster (measured: docs/benchmarks.md, 'Measurements
behind code choices'). The reader does the work and the owner does nothing, so a plan's moves are
pulled by their destinations; whoever calls `read` must know the source bytes are final and stay so
until every reader is done (the transformation's barriers).
Where the kernel refuses (Yama ptrace scope, a seccomp filter), moves go through torch.distributed.
"""
import ctypes
import errno
import os
from dataclasses import dataclass

import numpy as np

IOV_MAX = 1024  # iovecs per call, Linux's limit

_libc = ctypes.CDLL(None, use_errno=True)
_readv = _libc.process_vm_readv
_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
_readv.restype = ctypes.c_ssize_t


@dataclass(frozen=True)
class Run:
    """`nbytes` from address `remote` in the peer to address `local` here."""
    local: int
    remote: int
    nbytes: int


def read(pid: int, runs: list[Run]):
    """Copy every run from process `pid`; raises OSError naming the failure."""
    local = np.array([(r.local, r.nbytes) for r in runs], dtype=np.uint64)  # struct iovec: base, len
    remote = np.array([(r.remote, r.nbytes) for r in runs], dtype=np.uint64)
    for s in range(0, len(runs), IOV_MAX):
        n = min(IOV_MAX, len(runs) - s)
        want = int(local[s:s + n, 1].sum())
        got = _readv(pid, local.ctypes.data + s * 16, n, remote.ctypes.data + s * 16, n, 0)
        if got != want:
            err = ctypes.get_errno() if got < 0 else errno.EFAULT
            raise OSError(err, f"process_vm_readv from pid {pid}: read {max(got, 0)} of {want} bytes "
                               f"({os.strerror(err)})")


def read_refusal(pid: int, address: int, nbytes: int) -> str:
    """Why this process may not read `nbytes` at `address` of `pid` ("" if it may): the kernel may
    forbid it (Yama's ptrace scope, a seccomp filter)."""
    buf = ctypes.create_string_buffer(nbytes)
    try:
        read(pid, [Run(ctypes.addressof(buf), address, nbytes)])
    except OSError as e:
        hint = " (see /proc/sys/kernel/yama/ptrace_scope)" if e.errno == errno.EPERM else ""
        return f"{e.strerror or e}{hint}"
    return ""


@dataclass(frozen=True)
class PeerArenas:
    """Where every device's arena lives: process id and address of page 0, pages `page_stride` bytes apart."""
    pids: list[int]
    bases: list[int]
    page_stride: int

    def page_address(self, device: int, page: int) -> int:
        return self.bases[device] + page * self.page_stride
