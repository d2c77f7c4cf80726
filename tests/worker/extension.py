"""Test-only worker commands: fault injection and looking inside a worker. Every cluster started by
the tests runs this subclass (tests/conftest.py sets $GYGES_WORKER_CLASS); the production worker
declares none of these."""
from dataclasses import dataclass

from gyges.worker.commands import Command
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
