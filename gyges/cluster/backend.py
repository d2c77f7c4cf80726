"""Where steps and transformation phases run. `WorkerBackend` drives worker processes; the
simulator's backend (gyges/sim) returns the same results on a virtual clock.

A launch is a key and the devices it involves. Every device answers its commands in order, so each
device keeps a queue of the keys it owes answers for; a launch completes when all its devices have
answered. Commands may be queued behind one another on a device (a pre-copy chunk, then a step).
"""
import socket
import time
from collections import deque
from typing import Protocol

from multiprocessing import connection as mp_connection

from gyges.engine.batch import build_step
from gyges.memory.layout import units_per_block
from gyges.worker.commands import Step
from gyges.worker.handle import WorkerError, WorkerHandle

LIVENESS_S = 1.0  # a dead worker is noticed within this long, even when its instance is idle


class Backend(Protocol):
    def now(self) -> float: ...
    def launch_step(self, key, instance, batch) -> None: ...
    def launch_phase(self, key, devices: list[int], messages: dict, nbytes: int) -> None:
        """A transformation phase: `messages[d]` (gyges/worker/commands.py: CopyPages or Transform) for
        each device d; `nbytes` moved in all (what a simulated device needs to price it)."""
    def wait(self, until: float | None) -> list[tuple[object, object]]: ...
    def wake(self) -> None: ...
    def check_alive(self) -> None:
        """Raise WorkerError if a device is gone."""


class WorkerBackend:
    """Worker processes, one per device. Steps return rank 0's answer; phases return {device: answer}."""

    def __init__(self, workers: list[WorkerHandle], max_tp: int, block_tokens: int, record_logits: bool = False,
                 eos_ids: set[int] = frozenset()):
        self.workers, self.max_tp, self.block_tokens, self.eos_ids = workers, max_tp, block_tokens, eos_ids
        self.record_logits = record_logits
        self.owed: dict[int, deque] = {d: deque() for d in range(len(workers))}
        self.launches: dict[object, tuple[str, list[int], dict]] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._checked = time.monotonic()

    def now(self) -> float:
        return time.monotonic()

    @property
    def in_flight(self) -> bool:
        return bool(self.launches)

    def launch_step(self, key, instance, batch):
        m = units_per_block(self.max_tp, instance.tp)
        for r, dev in enumerate(instance.devices):
            self.workers[dev].send(Step(build_step(batch.seqs, batch.num_tokens, r, m, self.block_tokens,
                                                   want_logits=self.record_logits and r == 0, eos_ids=self.eos_ids)))
        self._owe(key, "step", instance.devices)

    def launch_phase(self, key, devices, messages, nbytes=0):
        for d in devices:
            self.workers[d].send(messages[d])  # a CopyPages or Transform (gyges/worker/commands.py)
        self._owe(key, "phase", devices)

    def _owe(self, key, kind: str, devices: list[int]):
        self.launches[key] = (kind, list(devices), {})
        for d in devices:
            self.owed[d].append(key)

    def wake(self):
        """Interrupt a `wait` from another thread (new requests or commands arrived)."""
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    def wait(self, until: float | None) -> list[tuple[object, object]]:
        """Completed launches, in the order they completed; returns early when woken, at `until`, or
        with nothing when nothing is in flight and `until` passed. Raises WorkerError when a worker fails."""
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
