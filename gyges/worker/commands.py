"""The messages a worker accepts, as plain dataclasses: the whole controller-to-worker contract.

A worker runs only the commands its class declares (`Worker.HANDLERS`); anything else is refused
with an error. Benchmarks and tests declare their extra commands in Worker subclasses of their own
(gyges/bench/transfer.py, tests/worker/extension.py), never in the production worker.
"""
from dataclasses import dataclass

from gyges.engine.batch import StepInput
from gyges.transform.plan import Move


class Command:
    """Base of every declared message."""


@dataclass(frozen=True)
class Step(Command):
    """Run one forward step; rank 0 of the instance answers (tokens, logits or None), others None."""
    batch: StepInput


@dataclass(frozen=True)
class CopyPages(Command):
    """Pre-copy page runs (tagged by plan index) while serving at the current degree; answers CopyDone."""
    moves: list[tuple[int, Move]]


@dataclass(frozen=True)
class CopyDone:
    """A device's answer to CopyPages: bytes that left it, and how long its part took (what sizes
    the next chunk)."""
    sent: int
    seconds: float


@dataclass(frozen=True)
class Transform(Command):
    """This device's part of a merge or split, then serve as rank `rank` of the TP-`tp` instance on
    the aligned group starting at `group_start`; `involved`: (start, size) of every device taking part."""
    kv_moves: list[tuple[int, Move]]
    weight_moves: list[tuple[int, Move]]
    tp: int
    rank: int
    group_start: int
    involved: tuple[int, int]


@dataclass(frozen=True)
class Info(Command):
    """What the worker reports about itself (see `Worker.info`)."""


@dataclass(frozen=True)
class Shutdown(Command):
    """Answer, then exit."""
