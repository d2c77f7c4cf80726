"""The transformation in progress, seen from the controller: starting it, its phases on the devices,
which instances it pauses, installing its result; refusals the policy must not repeat, and the
history of finished ones."""
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from gyges.cluster.instance import Instance, Instances
from gyges.policy import snapshot as ps
from gyges.protocol.answers import CopyDone, TransformStats
from gyges.protocol.backend import Backend
from gyges.transform.coordinator import TransformReport, Transition, one_more_step
from gyges.transform.plan import TransformError

log = logging.getLogger("gyges")

HISTORY = 200  # finished transformations kept for /v1/cluster


@dataclass
class TransformRecord:
    """A finished transformation: the coordinator's report plus what only the controller knows."""
    report: TransformReport
    reason: str
    started: float          # wall clock (time.time) when it began
    started_at: float       # on the controller's clock (monotonic, or the simulator's virtual time)
    duration_s: float       # first pre-copy chunk (or the switch) to the new instances installed
    stall_s: float          # how long the involved instances stood still for the switch


@dataclass
class Pending:
    """The transformation in progress and where it stands."""
    transition: Transition
    reason: str
    started_wall: float
    started: float
    future: Future = field(default_factory=Future)
    phase_in_flight: bool = False
    switching: bool = False
    extra_step: set = field(default_factory=set)  # old instances that took their one step past the pre-copy
    phase_t0: float = 0.0


@dataclass(eq=False)
class PhaseKey:
    """What a launched transformation phase is waiting for (hashed by identity)."""
    kind: str  # "chunk" | "switch"
    pending: Pending


class Transitions:
    def __init__(self, instances: Instances, block_tokens: int):
        self.instances, self.block_tokens = instances, block_tokens
        self.pending: Pending | None = None
        self.refused: dict[tuple[int, ...], ps.Refusal] = {}  # the latest refusal of each group, oldest first
        self.history: deque[TransformRecord] = deque(maxlen=HISTORY)

    def involves(self, inst: Instance) -> bool:
        return self.pending is not None and inst in self.pending.transition.old

    @property
    def phase_in_flight(self) -> bool:
        return self.pending is not None and self.pending.phase_in_flight

    def start(self, kind: str, devices: list[int], parts: int, reason: str, precopy: bool, now: float) -> Pending:
        """Begin a merge of the instances covering `devices`, or a split of the instance holding
        `devices[0]` into `parts`. Raises TransformError when it cannot be done; nothing changes then."""
        if self.pending is not None:
            raise TransformError("a transformation is already in progress; let it finish first")
        if kind == "merge":
            old = []
            for d in sorted(devices):
                inst = self.instances.of(d)
                if inst not in old:
                    old.append(inst)
            if sorted(d for i in old for d in i.devices) != sorted(devices):
                raise TransformError(f"devices {sorted(devices)} do not cover whole instances "
                                     f"({[i.devices for i in old]})")
            if len(old) < 2:
                raise TransformError(f"devices {sorted(devices)} are one instance already")
        else:
            old = [self.instances.of(devices[0])]
            if parts < 2 or old[0].tp % parts:
                raise TransformError(f"cannot split a TP{old[0].tp} instance into {parts} parts")
        tr = Transition(self.instances.layout, self.block_tokens, self.instances.build, kind, old, parts, precopy)
        self.pending = Pending(tr, reason, time.time(), now)
        return self.pending

    def refuse(self, devices, now: float):
        """Remember a refusal so the policy does not propose it again until its requests change."""
        key = tuple(sorted(devices))
        running = frozenset(s.id for i in self.instances if set(i.devices) <= set(key) for s in i.scheduler.running)
        self.refused.pop(key, None)  # re-inserted last: the dict stays oldest first
        self.refused[key] = ps.Refusal(key, now, running)

    def paused(self, inst: Instance, now: float) -> bool:
        """No new step for an instance the switch waits on, except one step that aligns it with the
        others (`one_more_step`)."""
        p = self.pending
        if p is None or not p.switching or inst not in p.transition.old:
            return False
        if inst in p.extra_step:
            return True
        left = [i.launched + i.step_s - now for i in p.transition.old if i is not inst and i.stepping]
        if one_more_step(inst.step_s, left):
            p.extra_step.add(inst)
            return False
        return True

    def drive(self, backend: Backend, end_aborted: Callable[[Instance], None]) -> Pending | None:
        """Launch the next phase if none is in flight: a pre-copy chunk, or, once every chunk is out
        and the old instances' steps are back, the switch (their aborted requests leave first, by
        `end_aborted`). Returns the Pending whose switch was launched, else None."""
        p = self.pending
        if p is None or p.phase_in_flight:
            return None
        tr = p.transition
        if not tr.done:
            p.phase_in_flight, p.phase_t0 = True, backend.now()
            backend.launch_phase(PhaseKey("chunk", p), tr.devices, *tr.next_chunk(max(i.step_s for i in tr.old)))
            return None
        p.switching = True
        if any(i.stepping for i in tr.old):
            return None  # the switch waits for their steps in flight; no new ones start
        for inst in tr.old:  # requests aborted during pre-copy leave before the plan is made
            end_aborted(inst)
        return p if self._launch_switch(backend) else None

    def chunk_done(self, seconds: float, answers: dict[int, CopyDone]):
        self.pending.phase_in_flight = False
        self.pending.transition.chunk_done(seconds, answers)

    def _launch_switch(self, backend: Backend) -> bool:
        """Plan the switch and send it; False if the plan is refused (the transformation is over)."""
        p = self.pending
        tr = p.transition
        try:
            sends, nbytes = tr.switch()
        except TransformError as e:
            self.pending = None
            p.future.set_exception(e)
            log.info("%s refused at the switch: %s", tr.kind, e)
            self.refuse(tr.devices, backend.now())
            return False
        p.phase_in_flight, p.phase_t0 = True, backend.now()
        backend.launch_phase(PhaseKey("switch", p), tr.devices, sends, nbytes)
        return True

    def install(self, stats: dict[int, TransformStats], now: float) -> Pending:
        """Put the new instances in place of the old ones; the finished transformation's Pending."""
        p = self.pending
        tr = p.transition
        new, report = tr.install(stats)
        for inst in new:
            inst.carried = True
        self.instances.replace(tr.old, new)
        self.pending = None
        self.history.append(TransformRecord(report, p.reason, p.started_wall, p.started, now - p.started,
                                            now - p.phase_t0))
        log.info("%s %s -> %s in %.1f ms (stall %.1f ms): %s", tr.kind, report.before, report.after,
                 1e3 * (now - p.started), 1e3 * (now - p.phase_t0), p.reason)
        p.future.set_result(report)
        return p

    def drop(self, why: str):
        """Forget the transformation in progress (its workers failed): its old instances are the layout."""
        p, self.pending = self.pending, None
        if p is not None and not p.future.done():
            p.future.set_exception(TransformError(why))
