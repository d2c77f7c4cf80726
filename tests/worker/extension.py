"""Test-only worker commands: fault injection and looking inside a worker. Tests that send them start
their cluster with `worker_class=TestingWorker` (the executor runs it); the production worker
declares none of these."""
from dataclasses import dataclass

from gyges.protocol.commands import Command
from gyges.worker.worker import Worker


@dataclass(frozen=True)
class FailNextMove(Command):
    """The next page move (a transformation's KV phase, or a pre-copy chunk) raises once done."""


@dataclass(frozen=True)
class KernelsInUse(Command):
    """(weights packed, C decode kernel, fused kernels)."""


@dataclass(frozen=True)
class UsesShm(Command):
    """Whether the bound instance all-reduces through shared memory."""


class TestingWorker(Worker):
    __test__ = False  # not a test class for pytest
    HANDLERS = {**Worker.HANDLERS,
                FailNextMove: lambda w, m: w.arm(),
                KernelsInUse: lambda w, m: (w.arena.packed, w.model.decode_kernel, w.model.fused),
                UsesShm: lambda w, m: w.model.comm is not None}
    armed = False

    def arm(self):
        self.armed = True

    def move_pages(self, moves: list) -> int:
        sent = super().move_pages(moves)
        if self.armed:
            self.armed = False
            raise RuntimeError("injected fault after the KV moves")
        return sent
