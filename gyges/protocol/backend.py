"""What the controller asks of a kind of device. `WorkerBackend` (gyges/worker) drives worker
processes; `SimBackend` (gyges/sim) prices the same launches with the cost model on a virtual clock.

A launch is a key (hashable, the controller's) and the devices it involves. Every device answers its
launches in order, so a launch queued behind another on a device (a pre-copy chunk behind a step)
starts when that one is done; a launch completes when all its devices have answered.
"""
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Protocol

from gyges.protocol.answers import CopyDone, StepResult, TransformStats
from gyges.protocol.commands import Command

PhaseAnswers = Mapping[int, CopyDone | TransformStats]  # device -> its answer to a transformation phase


class Backend(Protocol):
    def now(self) -> float:
        """Seconds on this backend's clock (monotonic; virtual on simulated devices)."""

    def launch_step(self, key: Hashable, devices: Sequence[int], batch: Any, steps: int = 1) -> None:
        """One step of the instance on `devices` (rank order). `batch`: the scheduler's batch
        (gyges.engine.scheduler.ScheduledBatch); each backend reads what it needs of it. `steps` > 1:
        that many identical decode steps as one launch, where the backend can (simulated devices;
        the controller guarantees the batch does not change in between); the answer says how many ran."""

    def cut(self, devices: Sequence[int]) -> None:
        """End the multi-step launch in flight on `devices` at its next step boundary, because the
        batch must change there (no-op where every launch is one step)."""

    def launch_phase(self, key: Hashable, devices: Sequence[int], messages: Mapping[int, Command], nbytes: int) -> None:
        """A transformation phase: `messages[d]` (CopyPages or Transform) for each device d;
        `nbytes`: the bytes it moves between devices (what a simulated device prices)."""

    def wait(self, until: float | None) -> list[tuple[Hashable, StepResult | PhaseAnswers]]:
        """Completed launches in completion order: a step's StepResult (its first rank's), a phase's
        answers by device. Returns early when woken, at `until`, or with nothing when nothing is in
        flight. Raises WorkerError when a device fails."""

    def wake(self) -> None:
        """Interrupt a `wait` from another thread (requests or commands arrived)."""

    def check_alive(self) -> None:
        """Raise WorkerError if a device is gone."""
