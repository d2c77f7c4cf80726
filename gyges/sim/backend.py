"""Simulated devices: the controller's backend on a virtual clock, timed by the cost model.

A launch completes at its start plus the cost model's time; its start waits for every device it
uses to finish what was launched on it before (a pre-copy chunk queues behind a step, as on
workers). `wait` jumps the clock to the next completion instead of sleeping.

Stretch: `launch_step(..., steps=k)` runs k decode steps of an unchanged batch as one launch
(the controller guarantees the batch does not change in between). Step i of the stretch reads
i more tokens of context per sequence, and the step time is linear in context, so step i takes
T0 + i * dT and the first j take j * T0 + dT * j * (j - 1) / 2. `cut` ends a stretch at the
first step boundary at or after now, when something (a new request, a transformation) must
change the batch there: exactly where a step-by-step run would next look at it.
"""
import heapq
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from gyges.engine.scheduler import ScheduledBatch
from gyges.policy.cost_model import CostModel, StepLoad
from gyges.protocol.answers import CopyDone, StepResult, TransformStats
from gyges.protocol.commands import Command, Transform

TOKEN = 0  # the id every simulated step returns: requests run to max_tokens (ignore_eos)


def step_load(batch: ScheduledBatch) -> StepLoad:
    """A batch as the cost model sees it: prefill chunks over their cached prefix, decodes' lengths."""
    prefills, decodes = [], []
    for seq, n in zip(batch.seqs, batch.num_tokens):
        if seq.num_computed >= len(seq.prompt_ids):
            decodes.append(seq.num_computed + n)
        else:
            prefills.append((n, seq.num_computed))
    return StepLoad.of(prefills, decodes)


def tokens_of(batch: ScheduledBatch) -> list[int]:
    """One token per sequence whose step reaches the end of its tokens (prompt done, or a decode)."""
    return [TOKEN for seq, n in zip(batch.seqs, batch.num_tokens) if seq.num_computed + n >= seq.num_tokens]


@dataclass
class Flight:
    """A step (or stretch) in flight: step i ends at start + i * t0 + dt * i * (i - 1) / 2."""
    key: object
    devices: list[int]
    start: float
    t0: float
    dt: float
    steps: int
    result_tokens: list[int]
    version: int = 0

    def elapsed(self, j: int) -> float:
        return j * self.t0 + self.dt * j * (j - 1) / 2

    def steps_within(self, seconds: float) -> int:
        """The most steps (at least 1, at most `steps`) that end within `seconds` of the start."""
        return max(1, min(self.steps, _largest_j(self.t0, self.dt, seconds)))

    @property
    def end(self) -> float:
        return self.start + self.elapsed(self.steps)


def _largest_j(t0: float, dt: float, s: float) -> int:
    """Largest j >= 0 with j * t0 + dt * j * (j - 1) / 2 <= s."""
    if dt <= 0:
        j = int(s // t0) if t0 > 0 else 1 << 30
    else:  # dt/2 j^2 + (t0 - dt/2) j - s <= 0
        b = t0 - dt / 2
        j = int((-b + math.sqrt(b * b + 2 * dt * s)) / dt)
    while j > 0 and j * t0 + dt * j * (j - 1) / 2 > s:
        j -= 1
    while (j + 1) * t0 + dt * (j + 1) * j / 2 <= s:
        j += 1
    return j


class SimBackend:
    """`max_stretch_s` bounds a stretch's length: the policy sees a stretching instance as it was
    at the stretch's start, so this bounds how stale that view can get."""

    def __init__(self, cost: CostModel, max_stretch_s: float = 1.0):
        self.cost, self.max_stretch_s = cost, max_stretch_s
        self.clock = 0.0
        self._heap: list[tuple[float, int, int, object]] = []
        self._order = 0
        self.busy: dict[int, float] = {}
        self.flights: dict[int, Flight] = {}  # by instance id (first device)
        self.steps_run = self.launches = 0

    def now(self) -> float:
        return self.clock

    def wake(self) -> None:
        """Nothing to interrupt: the driver submits requests between waits, in the same thread."""

    def _start(self, devices: list[int]) -> float:
        return max([self.clock] + [self.busy.get(d, 0.0) for d in devices])

    def _push(self, end: float, devices: list[int], item) -> None:
        for d in devices:
            self.busy[d] = end
        self._order += 1
        heapq.heappush(self._heap, (end, devices[0], self._order, item))

    def launch_step(self, key: Hashable, devices: Sequence[int], batch: ScheduledBatch, steps: int = 1) -> None:
        load = step_load(batch)
        tp = len(devices)
        t0 = self.cost.step_time(tp, load)
        dt = 0.0
        if steps > 1:
            more = StepLoad(load.prefill_tokens, load.decode_tokens, load.context_tokens + load.decode_tokens)
            dt = self.cost.step_time(tp, more) - t0
        f = Flight(key, list(devices), self._start(devices), t0, dt, steps, tokens_of(batch))
        f.steps = f.steps_within(self.max_stretch_s) if steps > 1 else 1
        self.flights[f.devices[0]] = f
        self.launches += 1
        self._push(f.end, f.devices, f)

    def cut(self, devices: Sequence[int]) -> None:
        """End the stretch on `devices` at the first step boundary at or after now (no-op otherwise)."""
        f = self.flights.get(devices[0])
        if f is None or f.steps == 1:
            return
        j = _largest_j(f.t0, f.dt, self.clock - f.start)
        j = j if j >= 1 and f.start + f.elapsed(j) >= self.clock else j + 1
        if j >= f.steps:
            return
        f.steps, f.version = j, f.version + 1
        self._push(f.end, f.devices, f)

    def launch_phase(self, key: Hashable, devices: Sequence[int], messages: Mapping[int, Command], nbytes: int = 0) -> None:
        """A transformation phase: a pre-copy chunk (CopyPages) moves its bytes while others decode;
        a switch (Transform) also pays the switch overhead (barriers, new block tables)."""
        switch = any(isinstance(m, Transform) for m in messages.values())
        tc = self.cost.transform_cost(nbytes, nbytes if switch else 0, len(devices))
        seconds = tc.time_s if switch else tc.time_s - self.cost.hw.switch_overhead_s
        end = self._start(devices) + seconds
        answer = {d: TransformStats() for d in devices} if switch else {d: CopyDone(0, seconds) for d in devices}
        self._push(end, list(devices), (key, answer))

    def check_alive(self) -> None:
        """Simulated devices never fail."""

    def wait(self, until: float | None) -> list[tuple[Hashable, object]]:
        """Advance to the earliest completion at or before `until` and return every launch that
        completes at that instant; with none, move the clock to `until` and return []."""
        done = []
        while self._heap:
            end, _, _, item = self._heap[0]
            if isinstance(item, Flight) and (self.flights.get(item.devices[0]) is not item or end != item.end):
                heapq.heappop(self._heap)  # superseded by a cut
                continue
            if (until is not None and end > until) or (done and end > self.clock):
                break
            heapq.heappop(self._heap)
            self.clock = max(self.clock, end)
            done.append(self._result(item))
        if not done and until is not None:
            self.clock = max(self.clock, until)
        return done

    def _result(self, item):
        if not isinstance(item, Flight):
            return item
        del self.flights[item.devices[0]]
        self.steps_run += item.steps
        return item.key, StepResult(item.result_tokens, steps=item.steps)
