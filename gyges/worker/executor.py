"""Starting, watching and restarting the worker processes of one host: ports, the shared-memory
all-reduce segments, process lifetimes. The controller only sees the backend it hands out.

Nothing here needs the main thread or installs signal handlers, so a host's executor and controller
can run inside another process's worker thread (a Ray actor, say).
"""
import logging
import socket
import time
from dataclasses import dataclass, replace

from gyges.kernels import shm_allreduce
from gyges.protocol.answers import DeviceInfo, WorkerError
from gyges.worker.backend import WorkerBackend
from gyges.worker.handle import WorkerHandle, log_fallbacks, recv_all, spawn_context
from gyges.worker.worker import Worker, WorkerSpec, aligned_groups

LOAD_TIMEOUT_S = 600
STOP_TIMEOUT_S = 5.0
log = logging.getLogger("gyges")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class HostConfig:
    """One host's devices, as the executor starts them. `spec` holds every worker setting but those
    fixed at each start (port, shared-memory segments, layout); `allreduce_bytes`: the largest
    tensor one all-reduce carries (a step's hidden states in fp32)."""
    spec: WorkerSpec
    allreduce_bytes: int
    eos_ids: frozenset[int] = frozenset()
    record_logits: bool = False


class LocalExecutor:
    """The worker processes of this host, one per device, of `worker_class` (tests and benchmarks
    pass subclasses that declare more commands)."""

    def __init__(self, host: HostConfig, worker_class: type[Worker] = Worker):
        self.host, self.worker_class = host, worker_class
        self.workers: list[WorkerHandle] = []
        self.info: list[DeviceInfo] = []
        self.backend: WorkerBackend | None = None

    @property
    def devices(self) -> int:
        return self.host.spec.world_size

    def start(self, sizes: list[int]) -> WorkerBackend:
        """Spawn every worker laid out as `sizes`, wait until all have loaded; on a failure, stop
        them all and raise WorkerError."""
        spec = self.host.spec
        groups = aligned_groups(spec.world_size, spec.max_tp)
        prefix = shm_allreduce.segment_prefix()
        shm = spec.device_type == "cpu" and shm_allreduce.create_segments(prefix, groups, self.host.allreduce_bytes)
        spec = replace(spec, master_port=free_port(), layout=tuple(sizes), shm_prefix=prefix if shm else None,
                       shm_slot_bytes=self.host.allreduce_bytes)
        ctx = spawn_context()
        self.workers = [WorkerHandle(ctx, r, spec, self.worker_class) for r in range(spec.world_size)]
        try:
            self.info = recv_all(self.workers, timeout=LOAD_TIMEOUT_S)
        except WorkerError:
            self.shutdown()
            raise
        finally:
            shm_allreduce.remove_segments(prefix, groups)  # the workers keep their mappings
        log_fallbacks(self.info)
        self.backend = WorkerBackend(self.workers, spec.max_tp, spec.block_tokens, set(self.host.eos_ids),
                                     self.host.record_logits)
        return self.backend

    def restart(self, sizes: list[int]) -> WorkerBackend:
        """After a failure: every worker stops and starts again, laid out as `sizes` (process groups
        that lost a peer cannot be trusted again, so all of them restart)."""
        self.shutdown()
        return self.start(sizes)

    @property
    def alive(self) -> bool:
        return bool(self.workers) and all(w.proc.is_alive() for w in self.workers)

    def shutdown(self):
        """Stop every worker; all are asked first, so stuck ones cost one timeout, not one each."""
        for w in self.workers:
            w.ask_to_stop()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in self.workers:
            w.stop(max(0.0, deadline - time.monotonic()))
        self.workers = []
        if self.backend is not None:
            self.backend.close()
            self.backend = None
