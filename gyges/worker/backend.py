"""The controller's backend over worker processes (gyges/protocol/backend.py): each rank of an
instance gets its own `Step` over its pipe; rank 0's answer is the step's.

Every device answers its commands in order, so each device keeps a queue of the keys it owes
answers for; a launch completes when all its devices have answered. Commands may be queued behind
one another on a device (a pre-copy chunk, then a step).
"""
import socket
import time
from collections import deque
from collections.abc import Hashable, Mapping, Sequence

from multiprocessing import connection as mp_connection

from gyges.engine.batch import build_step
from gyges.engine.scheduler import ScheduledBatch
from gyges.memory.layout import units_per_block
from gyges.protocol.answers import StepResult, WorkerError
from gyges.protocol.backend import PhaseAnswers
from gyges.protocol.commands import Command, Step
from gyges.worker.handle import WorkerHandle

LIVENESS_S = 1.0  # a dead worker is noticed within this long, even when its instance is idle


class WorkerBackend:
    """Worker processes, one per device; a step runs one step whatever `steps` asks (the answer says
    so). `record_logits`: rank 0 answers each step's logits too (for comparisons with a reference)."""

    def __init__(self, workers: list[WorkerHandle], max_tp: int, block_tokens: int, eos_ids: set[int] = frozenset(),
                 record_logits: bool = False):
        self.workers, self.max_tp, self.block_tokens, self.eos_ids = workers, max_tp, block_tokens, eos_ids
        self.record_logits = record_logits
        self.owed: dict[int, deque] = {d: deque() for d in range(len(workers))}
        self.launches: dict[Hashable, tuple[str, list[int], dict]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._checked = time.monotonic()

    def now(self) -> float:
        return time.monotonic()

    def launch_step(self, key: Hashable, devices: Sequence[int], batch: ScheduledBatch, steps: int = 1):
        m = units_per_block(self.max_tp, len(devices))
        for r, dev in enumerate(devices):
            self.workers[dev].send(Step(build_step(batch.seqs, batch.num_tokens, r, m, self.block_tokens,
                                                   want_logits=self.record_logits and r == 0, eos_ids=self.eos_ids)))
        self._owe(key, "step", devices)

    def cut(self, devices: Sequence[int]):
        """Nothing to cut: every launch is one step."""

    def launch_phase(self, key: Hashable, devices: Sequence[int], messages: Mapping[int, Command], nbytes: int = 0):
        for d in devices:
            self.workers[d].send(messages[d])
        self._owe(key, "phase", devices)

    def _owe(self, key: Hashable, kind: str, devices: Sequence[int]):
        self.launches[key] = (kind, list(devices), {})
        for d in devices:
            self.owed[d].append(key)

    def wake(self):
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def wait(self, until: float | None) -> list[tuple[Hashable, StepResult | PhaseAnswers]]:
        timeout = LIVENESS_S if until is None else max(0.0, min(LIVENESS_S, until - time.monotonic()))
        conns = {self.workers[d].conn: d for d, keys in self.owed.items() if keys}
        ready = mp_connection.wait([*conns, self._wake_r], timeout)
        done = []
        for conn in ready:
            if conn is self._wake_r:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, OSError):
                    pass
                continue
            d = conns[conn]
            key = self.owed[d].popleft()
            kind, devices, answers = self.launches[key]
            answers[d] = self.workers[d].recv()  # raises WorkerError on a failed command
            if len(answers) == len(devices):
                del self.launches[key]
                done.append((key, answers[devices[0]] if kind == "step" else answers))
        if time.monotonic() - self._checked >= LIVENESS_S or not ready:
            self.check_alive()
        return done

    def check_alive(self):
        self._checked = time.monotonic()
        for w in self.workers:
            if not w.proc.is_alive():
                raise WorkerError(f"worker {w.rank} exited with code {w.proc.exitcode}")

    def close(self):
        self._wake_r.close()
        self._wake_w.close()
