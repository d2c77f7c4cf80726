"""The controller: the loop that keeps every instance of a host stepping on its own, the policy's
decisions, and the requests' lives from arrival to end.

Each instance has at most one step in flight and is relaunched as soon as its own answer arrives;
a transformation pauses only the instances it involves (pre-copy chunks queue on their devices
between steps, and only the switch holds their steps back). Requests, aborts and operator calls
arrive from other threads through the inbox. The same loop runs on worker processes and on the
simulator's devices: only the backend differs. Its parts, each owning its state: the instances
(`instance.py`), the transformation in progress (`transitions.py`), failure recovery
(`recovery.py`) and what it shows (`views.py`).
"""
import logging
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from gyges.cluster.inbox import Abort, Call, Inbox, Submit
from gyges.cluster.instance import Instance, Instances, SchedulerLimits
from gyges.cluster.recovery import Recovery
from gyges.cluster.transitions import Pending, TransformRecord, Transitions
from gyges.cluster.views import ClusterStats, PolicyMemory, Views, request_view
from gyges.engine.scheduler import ScheduledBatch
from gyges.engine.sequence import Sequence, Status
from gyges.engine.step_time import StepTimeFit
from gyges.memory.layout import DeviceLayout
from gyges.policy import snapshot as ps
from gyges.protocol.answers import StepResult, WorkerError
from gyges.protocol.backend import Backend
from gyges.transform.plan import TransformError

log = logging.getLogger("gyges")

TICK_S = 1.0  # the policy looks again this often when nothing else happens


@dataclass(eq=False)
class StepKey:
    """What a launched step is waiting for (hashed by identity)."""
    instance: Instance
    batch: ScheduledBatch


# called from the loop's thread for every new token (seq, token ids, their logprobs, the logits row it was
# sampled from when the backend records them) and once more with no tokens when a request ends (then
# `seq.finished` is set)
OutputSink = Callable[[Sequence, list[int], list | None, np.ndarray | None], None]


@dataclass
class ControllerConfig:
    max_tp: int
    block_tokens: int
    max_num_seqs: int
    max_batched_tokens: int
    host_devices: int | None = None  # merges stay inside a host of this many devices (None: all are one host)
    long_prefill_tokens: int = 0  # most tokens of one prompt in a step (0: the whole budget)
    # a step that carries decodes takes only the prompt tokens that keep it within this, as predicted
    # from the steps of instances of its degree (0: off)
    tpot_target_s: float = 0.0
    precopy: bool = True     # transformations the policy starts pre-copy while decoding
    # simulator only: (scheduler, batch) -> how many identical decode steps the batch may run as one
    # launch (gyges.sim.stretch.decode_stretch); None: one step per launch
    stretch: Callable | None = None


class Controller:
    """`restart(sizes)`: start every device again laid out as `sizes`, returning the new backend
    (recovery after a failure; None: give up at once). `on_transform(record)`: called in the loop's
    thread when a transformation ends."""

    def __init__(self, backend: Backend, layout: DeviceLayout, cfg: ControllerConfig, policy, eos_ids: set[int],
                 sizes: list[int], on_output: OutputSink, restart: Callable[[list[int]], Backend] | None = None,
                 on_transform: Callable[[TransformRecord], None] | None = None, home: ps.HomeLayout | None = None):
        self.backend, self.cfg, self.policy = backend, cfg, policy
        self.eos_ids, self.on_output, self.on_transform = eos_ids, on_output, on_transform
        limits = SchedulerLimits(cfg.max_tp, cfg.block_tokens, cfg.max_num_seqs, cfg.max_batched_tokens,
                                 cfg.long_prefill_tokens)
        self.instances = Instances(layout, limits, lambda: self.backend.now(), sizes)
        self.transitions = Transitions(self.instances, cfg.block_tokens)
        self.recovery = Recovery(restart)
        self.views = Views(self.instances, self.transitions, self.recovery, cfg.host_devices)
        self.inbox = Inbox(lambda: self.backend.wake())
        self.held: list[Sequence] = []
        self.memory = PolicyMemory(home)
        self._next_tick = backend.now() + TICK_S
        self.prompt_tokens = self.generation_tokens = 0
        self.step_fits: dict[int, StepTimeFit] = {}  # TP degree -> its steps' time over their tokens
        # read by other threads without asking the loop (each a value replaced whole)
        self.queued = 0  # requests held or waiting in an instance, as of the loop's last pass
        self.kv_limit = self.policy.limit(self.snapshot())  # (KV tokens, what sets it): the most one request may need
        if home is None:
            self._decide(ps.Tick())  # a planning policy sets its home layout now, not at the first tick

    @property
    def down(self) -> str | None:
        return self.recovery.down

    @property
    def has_work(self) -> bool:
        return bool(self.transitions.pending or self.held or len(self.inbox)
                    or any(i.scheduler.has_work for i in self.instances))

    # the inbox: the only way in from other threads

    def submit(self, seq: Sequence):
        self.inbox.post(Submit(seq))

    def abort(self, seq_id: int):
        self.inbox.post(Abort(seq_id))

    def call(self, fn: Callable[[], object]) -> Future:
        """Run `fn` in the loop's thread between steps; its result or exception lands in the future."""
        msg = Call(fn)
        self.inbox.post(msg)
        return msg.future

    def take_inbox(self):
        """Act on every message posted so far (the loop does this on each pass)."""
        self.inbox.deliver(self._arrive, self._abort)

    # the loop

    def run_once(self, until: float | None = None):
        """Take new requests, let the policy act, launch every idle instance, and handle what
        completes before `until` (or the next liveness check). Raises WorkerError if the cluster
        gave up after repeated failures."""
        try:
            self.take_inbox()
            self._tick()
            self._drive_transition()
            self._launch_idle()
            for key, result in self.backend.wait(until if self._busy else (until or self.backend.now() + TICK_S)):
                self._complete(key, result)
        except WorkerError as e:
            self._recover(f"worker failure: {e}")
        finally:
            self.queued = len(self.held) + sum(len(i.scheduler.waiting) for i in self.instances)

    @property
    def _busy(self) -> bool:
        return any(i.stepping for i in self.instances) or self.transitions.phase_in_flight

    def step_all(self):
        """Lockstep, for scripts and tests: one step of every instance with work (a pending
        transition's next chunk or switch first), waiting for all of them."""
        try:
            self.take_inbox()
            self.backend.check_alive()
            self._drive_transition(sync=True)
            self._launch_idle()
            self._settle(lambda: self._busy)
        except WorkerError as e:
            self._recover(f"worker failure: {e}")

    def finish_transition(self):
        """Run the pending transformation to its end from the caller's thread (lockstep API)."""
        try:
            while self.transitions.pending is not None:
                self._drive_transition(sync=True)
                self._settle(lambda: self._busy)
        except WorkerError as e:
            self._recover(f"worker failure during a transformation: {e}")

    def _settle(self, busy: Callable[[], bool]):
        """Handle completions until `busy()` turns false (the lockstep callers)."""
        while busy():
            for key, result in self.backend.wait(None):
                self._complete(key, result)

    def _launch_idle(self):
        for inst in self.instances:
            if inst.stepping or self.transitions.paused(inst, self.backend.now()):
                continue
            batch = inst.scheduler.schedule(admit=not (inst.carried and inst.scheduler.running) and not inst.draining,
                                            step_tokens=self._step_tokens(inst))
            inst.carried = False
            if batch or batch.failed or batch.preempted:
                self.views.changed(inst)
            for seq in batch.failed:
                self._outgrown(seq)
            if batch:
                for seq in batch.seqs:
                    if seq.scheduled is None:
                        seq.scheduled = self.backend.now()
                inst.stepping, inst.launched = True, self.backend.now()
                self.backend.launch_step(StepKey(inst, batch), inst.devices, batch, self._stretch(inst, batch))

    def _step_tokens(self, inst: Instance) -> int | None:
        """The most tokens of a step of `inst` that carries decodes, under the TPOT target (None: off or no fit yet)."""
        if not self.cfg.tpot_target_s:
            return None
        return self.step_fits.setdefault(inst.tp, StepTimeFit()).tokens_within(self.cfg.tpot_target_s)

    def _stretch(self, inst: Instance, batch: ScheduledBatch) -> int:
        """How many decode steps of an unchanged batch to launch as one (simulator); anything that
        would change the batch sooner cuts it at the next step boundary (`_cut`)."""
        if self.cfg.stretch is None or self.held or self.transitions.involves(inst):
            return 1
        return self.cfg.stretch(inst.scheduler, batch)

    def _cut(self, inst: Instance):
        if inst.stepping:
            self.backend.cut(inst.devices)

    def _complete(self, key: Hashable, result):
        if isinstance(key, StepKey):
            self._apply(key.instance, key.batch, result)
        elif key.kind == "chunk":
            self.transitions.chunk_done(self.backend.now() - key.pending.phase_t0, result)
        else:
            self._install(result)

    def _apply(self, inst: Instance, batch: ScheduledBatch, result: StepResult):
        inst.stepping = False
        self.views.changed(inst)
        steps = result.steps  # a stretch: every entry is a decode, each ran `steps` times
        if not self.transitions.involves(inst):  # a step behind a pre-copy chunk is not its normal length
            inst.step_s = (self.backend.now() - inst.launched) / steps
            if self.cfg.tpot_target_s:  # only the target reads the fits
                self.step_fits.setdefault(inst.tp, StepTimeFit()).observe(sum(batch.num_tokens), inst.step_s, steps)
        finished, k = False, 0
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_computed += n + steps - 1
            if seq.num_computed < seq.num_tokens:
                continue
            tok = result.tokens[k]
            lp = result.logprobs[k] if result.logprobs is not None else None
            logits = result.logits[k] if result.logits is not None else None
            k += 1
            if seq.finished:  # aborted while its step was in flight
                continue
            if seq.aborted:
                self._end(inst, seq, "error" if seq.error else "abort")
                finished = True
                continue
            seq.output_ids += [tok] * steps
            self.generation_tokens += steps
            if len(seq.output_ids) == steps:
                self.prompt_tokens += len(seq.prompt_ids)
            self.on_output(seq, [tok] * steps, None if lp is None else [lp], logits)
            reason = self._stop_reason(seq, tok)
            if reason:
                self._end(inst, seq, reason)
                finished = True
        self._end_aborted(inst)
        if finished or self.held:
            self._decide(ps.Finished(-1, inst.id) if finished else ps.StepDone(inst.id))

    def _stop_reason(self, seq: Sequence, tok: int) -> str | None:
        """Token-level stops; stop strings are the front end's (they need the text)."""
        p = seq.params
        early = len(seq.output_ids) < p.min_tokens
        if not early and ((tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids):
            return "stop"
        if len(seq.output_ids) >= seq.max_tokens:
            return "length"
        return None

    def _end_aborted(self, inst: Instance):
        """End the requests of `inst` that were aborted while a step or transformation held their pages."""
        for seq in [s for s in inst.scheduler.requests if s.aborted]:
            self._end(inst, seq, "error" if seq.error else "abort")

    def _end(self, inst: Instance | None, seq: Sequence, reason: str, error: str | None = None):
        if error is not None:
            seq.error = error
        if inst is not None:
            inst.scheduler.finish(seq, reason)
            self.views.changed(inst)
        else:
            seq.status, seq.finish_reason = Status.FINISHED, reason
        self.on_output(seq, [], None, None)

    # requests

    def _arrive(self, seq: Sequence):
        seq.arrival = self.backend.now()
        self.held.append(seq)
        view = request_view(seq)
        self.memory.arrived(view)
        self._decide(ps.Arrival(view))

    def _outgrown(self, seq: Sequence):
        """A request that no longer fits its instance even alone goes back to the policy, which may
        merge for it or reject it."""
        seq.pages, seq.num_computed, seq.status, seq.error = [], 0, Status.WAITING, None
        self.held.append(seq)
        self._decide(ps.Arrival(request_view(seq)))

    def _abort(self, seq_id: int):
        for seq in self.held:
            if seq.id == seq_id:
                self.held.remove(seq)
                self._end(None, seq, "abort")
                return
        for inst in self.instances:
            for seq in inst.scheduler.requests:
                if seq.id == seq_id:
                    if inst.stepping or self.transitions.involves(inst):
                        seq.aborted = True  # its pages may be in use until the step or switch is over
                        self._cut(inst)
                    else:
                        self._end(inst, seq, "abort")
                    return

    def end_all(self, reason: str):
        """End every request with an error (shutdown): at once where no step holds its pages, else
        when its step comes back."""
        for seq in list(self.held):
            self.held.remove(seq)
            self._end(None, seq, "error", reason)
        for inst in self.instances:
            for seq in list(inst.scheduler.requests):
                seq.error, seq.aborted = reason, True
                if not inst.stepping and not self.transitions.involves(inst):
                    self._end(inst, seq, "error", reason)

    # the policy

    def snapshot(self) -> ps.Snapshot:
        return self.views.snapshot(self.backend.now(), self.held, self.memory.recent, self.memory.home)

    def _tick(self):
        if self.backend.now() >= self._next_tick:
            self._next_tick = self.backend.now() + TICK_S
            self._decide(ps.Tick())

    def _decide(self, event):
        for action in self.policy.decide(self.snapshot(), event):
            self._act(action)
        if self.held:  # the policy looks again after every step while it holds requests
            for inst in self.instances:
                self._cut(inst)

    def _act(self, a):
        if isinstance(a, ps.Route):
            seq = self._take_held(a.request)
            if seq is not None:
                inst = self.instances.of(a.instance)
                inst.scheduler.add(seq)
                self.views.changed(inst)
                self._cut(inst)
        elif isinstance(a, ps.Reject):
            seq = self._take_held(a.request)
            if seq is not None:
                self._end(None, seq, "error", a.reason)
        elif isinstance(a, ps.Merge):
            self._start("merge", sorted(a.devices), 0, a.reason)
        elif isinstance(a, ps.Split):
            self._start("split", self.instances.of(a.instance).devices, a.parts, a.reason)
        elif isinstance(a, ps.SetDraining):
            inst = self.instances.of(a.instance)
            inst.draining = a.on
            if a.on:  # its queued requests go back to the policy, which routes them elsewhere
                for seq in inst.scheduler.take_waiting():
                    self.held.append(seq)
            self.views.changed(inst)
            self._cut(inst)
        elif isinstance(a, ps.SetHome):
            self.memory.set_home(a.home)
        # Hold: the request stays in `held` and is offered again on the next event

    def _take_held(self, seq_id: int) -> Sequence | None:
        for seq in self.held:
            if seq.id == seq_id:
                self.held.remove(seq)
                return seq
        return None

    # transformations

    def start_transform(self, kind: str, devices: list[int], parts: int = 0, reason: str = "operator",
                        precopy: bool = True) -> Pending:
        """Begin a merge of the instances covering `devices`, or a split of the instance holding
        `devices[0]` into `parts`. Raises TransformError when it cannot be done; nothing changes then."""
        pending = self.transitions.start(kind, devices, parts, reason, precopy, self.backend.now())
        for inst in pending.transition.old:
            self._cut(inst)
        return pending

    def _start(self, kind: str, devices: list[int], parts: int, reason: str):
        try:
            self.start_transform(kind, devices, parts, reason, self.cfg.precopy)
        except TransformError as e:  # refused: not a failure; the policy sees nothing changed
            log.info("%s of %s refused: %s", kind, devices, e)
            self.transitions.refuse(devices, self.backend.now())

    def _drive_transition(self, sync: bool = False):
        p = self.transitions.drive(self.backend, self._end_aborted)
        if p is not None and sync:
            self._settle(lambda: self.transitions.pending is p)

    def _install(self, stats):
        p = self.transitions.install(stats, self.backend.now())
        self.kv_limit = self.policy.limit(self.snapshot())
        if self.on_transform is not None:
            self.on_transform(self.transitions.history[-1])
        tr = p.transition
        self._decide(ps.TransformDone(tr.kind, tuple(tr.devices)))

    # failures

    def _recover(self, reason: str):
        """Restart the workers in the layout that was running and re-queue every request from its
        prompt and generated tokens (seeded sampling resumes them exactly). A pending transformation
        is dropped: its old instances are the layout. Gives up after repeated failures (recovery.py)."""
        self.transitions.drop(f"the transformation failed ({reason.splitlines()[0]}); "
                              f"workers restarted and requests re-queued")
        seqs = sorted(self.instances.requests(), key=lambda s: s.id)
        sizes = self.instances.sizes
        try:
            self.backend = self.recovery.restarted(self.backend.now(), reason, sizes)
        except WorkerError:
            for seq in seqs + self.held:
                self._end(None, seq, "error", self.recovery.down)
            self.held = []
            self.instances.reset([])
            raise
        self.instances.reset(sizes)
        for seq in seqs:
            seq.pages, seq.num_computed, seq.status = [], 0, Status.WAITING
            if not seq.aborted:
                self.held.append(seq)
            else:
                self._end(None, seq, "abort")
        for seq in list(self.held):
            self._decide(ps.Arrival(request_view(seq)))

    # what it reports

    def describe(self) -> dict:
        """The body of /v1/cluster."""
        return self.views.describe(len(self.held), self.memory.home)

    def stats(self) -> ClusterStats:
        return self.views.stats(len(self.held), self.prompt_tokens, self.generation_tokens, self.memory.home_changes)
