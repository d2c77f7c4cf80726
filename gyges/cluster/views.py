"""What the controller shows: the policy's snapshot (plain data, gyges/policy/snapshot.py) with what it
keeps for the policy between decisions, the body of /v1/cluster, and the figures /metrics reads."""
import logging
import weakref
from collections import deque
from dataclasses import dataclass

from gyges.cluster.instance import Instance, Instances
from gyges.cluster.recovery import Recovery
from gyges.cluster.transitions import Transitions
from gyges.engine.sequence import Sequence
from gyges.policy import snapshot as ps

log = logging.getLogger("gyges")


@dataclass(frozen=True)
class ClusterStats:
    running: int
    waiting: int                        # queued in an instance or held by the policy
    kv_usage: dict[int, float]          # device -> fraction of its KV pages in use
    instances_by_tp: dict[int, int]
    prompt_tokens: int = 0
    generation_tokens: int = 0
    home_changes: int = 0               # times the planner changed the home layout


def request_view(seq: Sequence) -> ps.RequestView:
    return ps.RequestView(seq.id, len(seq.prompt_ids), seq.kv_need, seq.num_computed, seq.arrival)


class PolicyMemory:
    """What the controller keeps for the policy between decisions (the policy itself keeps nothing):
    the latest arrivals, for the planner's window, and the planner's state (SetHome)."""

    def __init__(self, home: ps.HomeLayout | None, recent: int = 1024):
        self.home, self.home_changes = home, 0
        self._recent: deque[ps.RequestView] = deque(maxlen=recent)
        self._view: tuple[ps.RequestView, ...] | None = ()

    def arrived(self, view: ps.RequestView):
        self._recent.append(view)
        self._view = None

    @property
    def recent(self) -> tuple[ps.RequestView, ...]:
        if self._view is None:
            self._view = tuple(self._recent)
        return self._view

    def set_home(self, home: ps.HomeLayout):
        if self.home is not None and home.sizes != self.home.sizes:
            self.home_changes += 1
            log.info("home layout %s -> %s: %s", self.home.sizes, home.sizes, home.reason)
        self.home = home


class Views:
    """Each instance's view is kept until its requests change (`changed`) or what else it shows does:
    the policy looks after every event, and most instances have not moved since."""

    def __init__(self, instances: Instances, transitions: Transitions, recovery: Recovery, host_devices: int | None):
        self.instances, self.transitions, self.recovery = instances, transitions, recovery
        self.host_devices = host_devices
        self._cache: weakref.WeakKeyDictionary[Instance, tuple] = weakref.WeakKeyDictionary()

    def changed(self, inst: Instance):
        self._cache.pop(inst, None)

    def _view(self, inst: Instance) -> ps.InstanceView:
        """The instance's view, kept while its requests and everything else it shows are unchanged
        (so the sums the policy takes over its requests are computed once: InstanceView's cached ones)."""
        bt = self.instances.limits.block_tokens
        key = (inst.pool.free_blocks, inst.pool.total_blocks, inst.formed_at, self.transitions.involves(inst),
               inst.draining)
        cached = self._cache.get(inst)
        if cached is None or cached[0] != key:
            running, waiting = (cached[1].running, cached[1].waiting) if cached is not None else (
                tuple(request_view(s) for s in inst.scheduler.running),
                tuple(request_view(s) for s in inst.scheduler.waiting))
            cached = self._cache[inst] = (key, ps.InstanceView(inst.id, tuple(inst.devices), key[1] * bt, key[0] * bt,
                                                               running, waiting, *key[2:]))
        return cached[1]

    def snapshot(self, now: float, held: list[Sequence], recent: tuple[ps.RequestView, ...] = (),
                 home: ps.HomeLayout | None = None) -> ps.Snapshot:
        lay, tr = self.instances.layout, self.transitions
        insts = tuple(self._view(i) for i in self.instances)
        pending = None
        if tr.pending is not None:
            t = tr.pending.transition
            pending = ps.PendingTransform(t.kind, tuple(t.devices), tr.pending.started, tr.pending.switching)
        n, max_tp = sum(self.instances.sizes), self.instances.limits.max_tp
        caps = {t: lay.kv_tokens(t) for t in (1 << k for k in range(max_tp.bit_length()))}
        host = n if self.host_devices is None else min(self.host_devices, n)
        return ps.Snapshot(now, n, max_tp, host, caps, insts, tuple(request_view(s) for s in held), pending,
                           tuple(tr.refused.values()), recent, home)

    def describe(self, held: int, home: ps.HomeLayout | None) -> dict:
        """The layout, the planner's home layout and the transformation history: the body of /v1/cluster."""
        bt, p = self.instances.limits.block_tokens, self.transitions.pending
        lay, max_tp = self.instances.layout, self.instances.limits.max_tp
        return {
            "devices": sum(self.instances.sizes),
            "kv_capacity_by_tp": {t: lay.kv_tokens(t) for t in (1 << k for k in range(max_tp.bit_length()))},
            "home_layout": None if home is None else {
                "sizes": list(home.sizes), "since": home.since, "planned_at": home.planned_at, "reason": home.reason,
                "pinned": home.pinned, "priced_device_s": {",".join(map(str, s)): v for s, v in home.priced}},
            "instances": [{"id": i.id, "devices": i.devices, "tp": i.tp, "running": len(i.scheduler.running),
                           "waiting": len(i.scheduler.waiting), "kv_capacity_tokens": i.pool.total_blocks * bt,
                           "kv_free_tokens": i.pool.free_blocks * bt} for i in self.instances],
            "held": held,
            "pending": None if p is None else {"kind": p.transition.kind, "devices": p.transition.devices,
                                               "reason": p.reason},
            "transformations": [{"kind": r.report.kind, "from": r.report.before, "to": r.report.after,
                                 "reason": r.reason, "started": r.started, "started_at": r.started_at,
                                 "duration_s": r.duration_s, "stall_s": r.stall_s}
                                for r in self.transitions.history],
            "failures": [reason for _, reason in self.recovery.failures],
        }

    def stats(self, held: int, prompt_tokens: int, generation_tokens: int, home_changes: int) -> ClusterStats:
        usage, by_tp = {}, {}
        for inst in self.instances:
            by_tp[inst.tp] = by_tp.get(inst.tp, 0) + 1
            usage |= inst.pool.usage()
        return ClusterStats(sum(len(i.scheduler.running) for i in self.instances),
                            sum(len(i.scheduler.waiting) for i in self.instances) + held, usage, by_tp,
                            prompt_tokens, generation_tokens, home_changes)
