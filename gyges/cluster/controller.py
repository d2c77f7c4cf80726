"""The controller: instances with their schedulers, the policy, transformations, and the loop that
keeps every instance stepping on its own.

Each instance has at most one step in flight and is relaunched as soon as its own answer arrives;
a transformation pauses only the instances it involves (pre-copy chunks queue on their devices
between steps, and only the switch holds their steps back). Requests, aborts and operator calls
arrive from other threads through an inbox. The same loop runs on worker processes and on the
simulator's devices: only the backend differs.
"""
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from gyges.engine.kv_pool import DevicePages, KVPool
from gyges.engine.scheduler import ScheduledBatch, Scheduler
from gyges.engine.sequence import Sequence, Status
from gyges.engine.step_time import StepTimeFit
from gyges.memory.layout import DeviceLayout
from gyges.policy import snapshot as ps
from gyges.transform.coordinator import TransformReport, Transition, one_more_step
from gyges.transform.plan import TransformError, kv_page_order
from gyges.worker.errors import WorkerError

log = logging.getLogger("gyges")

TICK_S = 1.0            # the policy looks again this often when nothing else happens
HISTORY = 200           # transformations and failures kept for /v1/cluster
MAX_FAILURES = 3        # worker failures tolerated within FAILURE_WINDOW_S; one more gives up
FAILURE_WINDOW_S = 600.0


@dataclass(eq=False)
class Instance:
    devices: list[int]
    scheduler: Scheduler
    formed_at: float = 0.0
    stepping: bool = False  # a step in flight
    # formed by a transformation and not stepped yet: its first step is the one the requests that ran
    # through the switch wait for, so it admits no new request (those held for a merge join one step later)
    carried: bool = False
    launched: float = 0.0   # when its step in flight was launched
    step_s: float = 0.0     # how long its last step took (a stretch: per step)

    @property
    def tp(self) -> int:
        return len(self.devices)

    @property
    def id(self) -> int:
        return self.devices[0]


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
class StepKey:
    """What a launched step is waiting for (hashed by identity)."""
    instance: Instance
    batch: ScheduledBatch


@dataclass(eq=False)
class PhaseKey:
    kind: str  # "chunk" | "switch"
    pending: Pending


OutputSink = Callable[[Sequence, list[int], list | None], None]


@dataclass
class ControllerConfig:
    max_tp: int
    block_tokens: int
    max_num_seqs: int
    max_batched_tokens: int
    host_devices: int = 8
    long_prefill_tokens: int = 0  # most tokens of one prompt in a step (0: the whole budget)
    # a step that carries decodes takes only the prompt tokens that keep it within this, as predicted
    # from the steps of instances of its degree (0: off)
    tpot_target_s: float = 0.0
    precopy: bool = True     # transformations the policy starts pre-copy while decoding
    record_logits: bool = False
    # simulator only: (scheduler, batch) -> how many identical decode steps the batch may run as one
    # launch (gyges.sim.stretch.decode_stretch); None: one step per launch
    stretch: Callable | None = None


class Controller:
    """`on_output(seq, new_tokens, logprobs)` is called from the loop's thread for every new token
    and once more, with no tokens, when a request ends (then `seq.finished` is set)."""

    def __init__(self, backend, layout: DeviceLayout, cfg: ControllerConfig, policy, eos_ids: set[int],
                 sizes: list[int], on_output: OutputSink, restart: Callable[[list[int]], object] | None = None,
                 stop_check: Callable[[Sequence], bool] | None = None):
        self.backend, self.layout, self.cfg, self.policy = backend, layout, cfg, policy
        self.eos_ids, self.on_output, self.restart, self.stop_check = eos_ids, on_output, restart, stop_check
        self.instances = self._layout_instances(sizes)
        self.held: list[Sequence] = []
        self.pending: Pending | None = None
        self.refused: dict[tuple[int, ...], ps.Refusal] = {}  # the latest refusal of each group, for the policy
        self.history: deque[TransformRecord] = deque(maxlen=HISTORY)
        self.failures: deque[tuple[float, str]] = deque(maxlen=HISTORY)
        self.logits: dict[int, list] = {}
        self.down: str | None = None  # why the cluster stopped serving (gave up after failures)
        self.recovering = False       # workers are restarting after a failure
        self._inbox: deque = deque()
        self._lock = threading.Lock()
        self._next_tick = backend.now() + TICK_S
        self.prompt_tokens = self.generation_tokens = 0
        self.step_fits: dict[int, StepTimeFit] = {}  # TP degree -> its steps' time over their tokens
        # the snapshot's request views of each instance, dropped whenever its requests change
        self._views: weakref.WeakKeyDictionary[Instance, tuple] = weakref.WeakKeyDictionary()

    # instances

    def _layout_instances(self, sizes: list[int]) -> list[Instance]:
        out, start = [], 0
        for s in sizes:
            out.append(self.make_instance(list(range(start, start + s))))
            start += s
        return out

    def make_instance(self, devices: list[int], free: dict[int, list[int]] | None = None) -> Instance:
        """An instance on `devices` (rank order); `free`: each device's free KV pages (default: all)."""
        tp, lay = len(devices), self.layout
        pages = [DevicePages(kv_page_order(lay, lay.free_pages(tp, r) if free is None else free[d]), lay.kv_capacity(tp))
                 for r, d in enumerate(devices)]
        pool = KVPool(pages, self.cfg.max_tp, self.cfg.block_tokens)
        sched = Scheduler(pool, self.cfg.max_num_seqs, self.cfg.max_batched_tokens, self.cfg.long_prefill_tokens)
        return Instance(devices, sched, formed_at=self.backend.now())

    def capacity_tokens(self, tp: int) -> int:
        """KV tokens an empty instance of degree `tp` holds."""
        return self.layout.kv_tokens(tp)

    def instance_of(self, device: int) -> Instance:
        return next(i for i in self.instances if device in i.devices)

    @property
    def sizes(self) -> list[int]:
        return [i.tp for i in self.instances]

    @property
    def has_work(self) -> bool:
        return bool(self.pending or self.held or self._inbox or any(i.scheduler.has_work for i in self.instances))

    # the inbox: the only way in from other threads

    def submit(self, seq: Sequence):
        self._post(("add", seq))

    def abort(self, seq_id: int):
        self._post(("abort", seq_id))

    def call(self, fn: Callable[[], object]) -> Future:
        """Run `fn` in the loop's thread between steps; its result or exception lands in the future."""
        fut = Future()
        self._post(("call", fn, fut))
        return fut

    def _post(self, item):
        with self._lock:
            self._inbox.append(item)
        self.backend.wake()

    def _drain(self):
        while True:
            with self._lock:
                if not self._inbox:
                    return
                item = self._inbox.popleft()
            if item[0] == "add":
                self._arrive(item[1])
            elif item[0] == "abort":
                self._abort(item[1])
            else:
                _, fn, fut = item
                try:
                    fut.set_result(fn())
                except BaseException as e:  # handed to the caller's thread
                    fut.set_exception(e)

    # the loop

    def run_once(self, until: float | None = None):
        """Take new requests, let the policy act, launch every idle instance, and handle what
        completes before `until` (or the next liveness check). Raises WorkerError if the cluster
        gave up after repeated failures."""
        try:
            self._drain()
            self._tick()
            self._drive_transition()
            self._launch_idle()
            for key, result in self.backend.wait(until if self._busy else (until or self.backend.now() + TICK_S)):
                self._complete(key, result)
        except WorkerError as e:
            self._recover(f"worker failure: {e}")

    @property
    def _busy(self) -> bool:
        return any(i.stepping for i in self.instances) or bool(self.pending and self.pending.phase_in_flight)

    def step_all(self):
        """Lockstep, for scripts and tests: one step of every instance with work (a pending
        transition's next chunk or switch first), waiting for all of them."""
        try:
            self._drain()
            self.backend.check_alive()
            self._drive_transition(sync=True)
            self._launch_idle()
            self._settle(lambda: self._busy)
        except WorkerError as e:
            self._recover(f"worker failure: {e}")

    def finish_transition(self):
        """Run the pending transformation to its end from the caller's thread (lockstep API)."""
        try:
            while self.pending is not None:
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
            if inst.stepping or self._paused(inst):
                continue
            batch = inst.scheduler.schedule(admit=not (inst.carried and inst.scheduler.running),
                                            step_tokens=self._step_tokens(inst))
            inst.carried = False
            if batch or batch.failed or batch.preempted:
                self._views.pop(inst, None)
            for seq in batch.failed:
                self._outgrown(seq)
            if batch:
                for seq in batch.seqs:
                    if seq.scheduled is None:
                        seq.scheduled = self.backend.now()
                inst.stepping, inst.launched = True, self.backend.now()
                steps = self._stretch(inst, batch)
                if steps > 1:
                    self.backend.launch_step(StepKey(inst, batch), inst, batch, steps)
                else:
                    self.backend.launch_step(StepKey(inst, batch), inst, batch)

    def _step_tokens(self, inst: Instance) -> int | None:
        """The most tokens of a step of `inst` that carries decodes, under the TPOT target (None: off or no fit yet)."""
        if not self.cfg.tpot_target_s:
            return None
        return self.step_fits.setdefault(inst.tp, StepTimeFit()).tokens_within(self.cfg.tpot_target_s)

    # stretch (simulator): k decode steps of an unchanged batch as one launch; anything that would
    # change the batch sooner cuts it at the next step boundary, where stepping would look again
    def _stretch(self, inst: Instance, batch: ScheduledBatch) -> int:
        if self.cfg.stretch is None or self.held or self._in_transition(inst):
            return 1
        return self.cfg.stretch(inst.scheduler, batch)

    def _cut(self, inst: Instance):
        if self.cfg.stretch is not None and inst.stepping:
            self.backend.cut(inst)

    def _paused(self, inst: Instance) -> bool:
        """No new step for an instance the switch waits on, except one step that aligns it with the
        others (`one_more_step`)."""
        p = self.pending
        if p is None or not p.switching or inst not in p.transition.old:
            return False
        if inst in p.extra_step:
            return True
        now = self.backend.now()
        left = [i.launched + i.step_s - now for i in p.transition.old if i is not inst and i.stepping]
        if one_more_step(inst.step_s, left):
            p.extra_step.add(inst)
            return False
        return True

    def _complete(self, key, result):
        if isinstance(key, StepKey):
            self._apply(key.instance, key.batch, result)
        elif key.kind == "chunk":
            self.pending.phase_in_flight = False
            self.pending.transition.chunk_done(self.backend.now() - self.pending.phase_t0, result)
        else:
            self._install(result)

    def _apply(self, inst: Instance, batch: ScheduledBatch, answer):
        inst.stepping = False
        self._views.pop(inst, None)
        tokens, logits, *rest = answer
        logprobs = rest[0] if rest else None
        steps = rest[1] if len(rest) > 1 else 1  # a stretch: every entry is a decode, each ran `steps` times
        if not self._in_transition(inst):  # a step behind a pre-copy chunk is not its normal length
            inst.step_s = (self.backend.now() - inst.launched) / steps
            if self.cfg.tpot_target_s:  # only the target reads the fits
                self.step_fits.setdefault(inst.tp, StepTimeFit()).observe(sum(batch.num_tokens), inst.step_s, steps)
        finished, k = False, 0
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_computed += n + steps - 1
            if seq.num_computed < seq.num_tokens:
                continue
            tok, lp = tokens[k], (logprobs[k] if logprobs is not None else None)
            if logits is not None:
                self.logits.setdefault(seq.id, []).append(logits[k])
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
            self.on_output(seq, [tok] * steps, None if lp is None else [lp])
            reason = self._stop_reason(seq, tok)
            if reason:
                self._end(inst, seq, reason)
                finished = True
        for seq in [s for s in inst.scheduler.requests if s.aborted]:
            self._end(inst, seq, "error" if seq.error else "abort")
        if finished or self.held:
            self._decide(ps.Finished(-1, inst.id) if finished else ps.StepDone(inst.id))

    def _stop_reason(self, seq: Sequence, tok: int) -> str | None:
        p = seq.params
        early = len(seq.output_ids) < getattr(p, "min_tokens", 0)
        if not early and ((tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids):
            return "stop"
        if not early and self.stop_check is not None and self.stop_check(seq):
            return "stop"
        if len(seq.output_ids) >= p.max_tokens:
            return "length"
        return None

    def _end(self, inst: Instance | None, seq: Sequence, reason: str, error: str | None = None):
        if error is not None:
            seq.error = error
        if inst is not None:
            inst.scheduler.finish(seq, reason)
            self._views.pop(inst, None)
        else:
            seq.status, seq.finish_reason = Status.FINISHED, reason
        self.on_output(seq, [], None)

    # requests

    def _arrive(self, seq: Sequence):
        seq.arrival = self.backend.now()
        self.held.append(seq)
        self._decide(ps.Arrival(self._view(seq)))

    def _outgrown(self, seq: Sequence):
        """A request that no longer fits its instance even alone goes back to the policy, which may
        merge for it or reject it."""
        seq.pages, seq.num_computed, seq.status, seq.error = [], 0, Status.WAITING, None
        self.held.append(seq)
        self._decide(ps.Arrival(self._view(seq)))

    def _abort(self, seq_id: int):
        for seq in self.held:
            if seq.id == seq_id:
                self.held.remove(seq)
                self._end(None, seq, "abort")
                return
        for inst in self.instances:
            for seq in inst.scheduler.requests:
                if seq.id == seq_id:
                    if inst.stepping or self._in_transition(inst):
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
                if not inst.stepping and not self._in_transition(inst):
                    self._end(inst, seq, "error", reason)

    def _in_transition(self, inst: Instance) -> bool:
        return self.pending is not None and inst in self.pending.transition.old

    # the policy

    def _view(self, seq: Sequence) -> ps.RequestView:
        return ps.RequestView(seq.id, len(seq.prompt_ids), seq.kv_need, seq.num_computed, seq.arrival)

    def _request_views(self, inst: Instance) -> tuple:
        views = self._views.get(inst)
        if views is None:
            views = self._views[inst] = (tuple(self._view(s) for s in inst.scheduler.running),
                                         tuple(self._view(s) for s in inst.scheduler.waiting))
        return views

    def snapshot(self) -> ps.Snapshot:
        bt = self.cfg.block_tokens
        insts = tuple(ps.InstanceView(
            i.id, tuple(i.devices), i.scheduler.pool.total_blocks * bt, i.scheduler.pool.free_blocks * bt,
            *self._request_views(i), i.formed_at, self._in_transition(i)) for i in self.instances)
        pending = None
        if self.pending is not None:
            pending = ps.PendingTransform(self.pending.transition.kind, tuple(self.pending.transition.devices),
                                          self.pending.started, self.pending.switching)
        n = sum(self.sizes)
        caps = {t: self.capacity_tokens(t) for t in (1 << k for k in range(self.cfg.max_tp.bit_length()))}
        return ps.Snapshot(self.backend.now(), n, self.cfg.max_tp, min(self.cfg.host_devices, n), caps, insts,
                           tuple(self._view(s) for s in self.held), pending, tuple(self.refused.values()))

    def _tick(self):
        if self.backend.now() >= self._next_tick:
            self._next_tick = self.backend.now() + TICK_S
            if self.held or any(i.tp > 1 for i in self.instances) or self.pending:
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
                inst = self.instance_of(a.instance)
                inst.scheduler.add(seq)
                self._views.pop(inst, None)
                self._cut(inst)
        elif isinstance(a, ps.Reject):
            seq = self._take_held(a.request)
            if seq is not None:
                self._end(None, seq, "error", a.reason)
        elif isinstance(a, ps.Merge):
            self._start("merge", sorted(a.devices), 0, a.reason, self.cfg.precopy)
        elif isinstance(a, ps.Split):
            self._start("split", self.instance_of(a.instance).devices, a.parts, a.reason, self.cfg.precopy)
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
        if self.pending is not None:
            raise TransformError("a transformation is already in progress; let it finish first")
        if kind == "merge":
            old = []
            for d in sorted(devices):
                inst = self.instance_of(d)
                if inst not in old:
                    old.append(inst)
            if sorted(d for i in old for d in i.devices) != sorted(devices):
                raise TransformError(f"devices {sorted(devices)} do not cover whole instances "
                                     f"({[i.devices for i in old]})")
            if len(old) < 2:
                raise TransformError(f"devices {sorted(devices)} are one instance already")
        else:
            old = [self.instance_of(devices[0])]
            if parts < 2 or old[0].tp % parts:
                raise TransformError(f"cannot split a TP{old[0].tp} instance into {parts} parts")
        tr = Transition(self.layout, self.cfg.block_tokens, self.make_instance, kind, old, parts, precopy)
        for inst in old:
            self._cut(inst)
        self.pending = Pending(tr, reason, time.time(), self.backend.now())
        return self.pending

    def _start(self, kind, devices, parts, reason, precopy):
        try:
            self.start_transform(kind, devices, parts, reason, precopy)
        except TransformError as e:  # refused: not a failure; the policy sees nothing changed
            log.info("%s of %s refused: %s", kind, devices, e)
            self._refused(devices)

    def _refused(self, devices):
        """Remember a refusal so the policy does not propose it again until its requests change."""
        key = tuple(sorted(devices))
        running = frozenset(s.id for i in self.instances if set(i.devices) <= set(key) for s in i.scheduler.running)
        self.refused.pop(key, None)  # re-inserted last: the dict stays oldest first
        self.refused[key] = ps.Refusal(key, self.backend.now(), running)

    def _drive_transition(self, sync: bool = False):
        p = self.pending
        if p is None or p.phase_in_flight:
            return
        tr = p.transition
        if not tr.done:
            p.phase_in_flight, p.phase_t0 = True, self.backend.now()
            step_s = max(i.step_s for i in tr.old)
            self.backend.launch_phase(PhaseKey("chunk", p), tr.devices, *tr.next_chunk(step_s))
            return
        p.switching = True
        if any(i.stepping for i in tr.old):
            return  # the switch waits for their steps in flight; no new ones start
        for inst in tr.old:  # requests aborted during pre-copy leave before the plan is made
            for seq in [s for s in inst.scheduler.requests if s.aborted]:
                self._end(inst, seq, "abort")
        try:
            sends, nbytes = tr.switch()
        except TransformError as e:
            self.pending = None
            p.future.set_exception(e)
            log.info("%s refused at the switch: %s", tr.kind, e)
            self._refused(tr.devices)
            return
        p.phase_in_flight, p.phase_t0 = True, self.backend.now()
        self.backend.launch_phase(PhaseKey("switch", p), tr.devices, sends, nbytes)
        if sync:
            self._settle(lambda: self.pending is p)

    def _install(self, stats: dict[int, dict]):
        p, now = self.pending, self.backend.now()
        tr = p.transition
        new, report = tr.install(stats)
        for inst in new:
            inst.carried = True
        self.instances = sorted([i for i in self.instances if i not in tr.old] + new, key=lambda i: i.id)
        self.pending = None
        self.history.append(TransformRecord(report, p.reason, p.started_wall, p.started, now - p.started,
                                            now - p.phase_t0))
        log.info("%s %s -> %s in %.1f ms (stall %.1f ms): %s", tr.kind, report.before, report.after,
                 1e3 * (now - p.started), 1e3 * (now - p.phase_t0), p.reason)
        p.future.set_result(report)
        self._decide(ps.TransformDone(tr.kind, tuple(tr.devices)))

    # failures

    def _recover(self, reason: str):
        """Restart the workers in the layout that was running and re-queue every request from its
        prompt and generated tokens (seeded sampling resumes them exactly). A pending transformation
        is dropped: its old instances are the layout. Gives up after MAX_FAILURES within the window."""
        now = self.backend.now()
        self.failures.append((now, reason))
        log.error("%s", reason)
        p, self.pending = self.pending, None
        if p is not None and not p.future.done():
            p.future.set_exception(TransformError(f"the transformation failed ({reason.splitlines()[0]}); "
                                                  f"workers restarted and requests re-queued"))
        seqs = sorted((s for i in self.instances for s in i.scheduler.requests), key=lambda s: s.id)
        sizes = self.sizes
        recent = sum(1 for t, _ in self.failures if now - t <= FAILURE_WINDOW_S)
        self.recovering = True
        try:
            if self.restart is None or recent > MAX_FAILURES:
                raise WorkerError(f"gave up after {recent} worker failures within {FAILURE_WINDOW_S:.0f} s")
            self.backend = self.restart(sizes)
        except WorkerError as e:
            self.recovering = False
            self.down = f"{reason}; {e}"
            for seq in seqs + self.held:
                self._end(None, seq, "error", self.down)
            self.held, self.instances = [], []
            raise WorkerError(self.down) from None
        self.recovering = False
        self.instances = self._layout_instances(sizes)
        for seq in seqs:
            seq.pages, seq.num_computed, seq.status = [], 0, Status.WAITING
            if not seq.aborted:
                self.held.append(seq)
            else:
                self._end(None, seq, "abort")
        for seq in list(self.held):
            self._decide(ps.Arrival(self._view(seq)))

    # what it reports

    def describe(self) -> dict:
        """The layout and the transformation history: the body of /v1/cluster."""
        bt = self.cfg.block_tokens
        return {
            "devices": sum(self.sizes),
            "instances": [{"id": i.id, "devices": i.devices, "tp": i.tp, "running": len(i.scheduler.running),
                           "waiting": len(i.scheduler.waiting), "kv_capacity_tokens": i.scheduler.pool.total_blocks * bt,
                           "kv_free_tokens": i.scheduler.pool.free_blocks * bt} for i in self.instances],
            "held": len(self.held),
            "pending": None if self.pending is None else {"kind": self.pending.transition.kind,
                                                          "devices": self.pending.transition.devices,
                                                          "reason": self.pending.reason},
            "transformations": [{"kind": r.report.kind, "from": r.report.before, "to": r.report.after,
                                 "reason": r.reason,
                                 "started": r.started, "started_at": r.started_at, "duration_s": r.duration_s,
                                 "stall_s": r.stall_s}
                                for r in self.history],
            "failures": [reason for _, reason in self.failures],
        }
