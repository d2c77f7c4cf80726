"""Where each request goes, and when instances merge or split: `decide(snapshot, event) -> actions`.

Pure: the actions depend on the snapshot and the event only (no clock, no randomness of its own).
The planner's state travels in the snapshot (`Snapshot.home`, kept by the controller from the
`SetHome` actions). Requests the policy held are offered again on every event, before the event's
own arrival, and each offered request gets exactly one Route, Hold or Reject.
"""
from dataclasses import replace

from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel
from gyges.policy.homing import drains, toward_home
from gyges.policy.load import freeness, room
from gyges.policy.planner import replan, start_layout
from gyges.policy.reshape import (blocked_groups, degrees, free_after_merge, merge_for, pending_merge, price_merge,
                                  ride_along, wait_for_room)
from gyges.policy.router import least_ttft, predicted_ttft, soonest
from gyges.policy.snapshot import (Action, Arrival, Event, Hold, InstanceView, Merge, Reject, RequestView, Route,
                                   SetHome, Snapshot)

MERGE_GAIN = 1.25  # a merge for a request that some instance holds must bring its first token this much sooner


class Plan:
    """The snapshot as this decision changes it: routed requests join their instance's queue, and the
    instances of a transformation started now take no more requests; groups the planner refused
    lately are not proposed again (see `blocked_groups`)."""

    def __init__(self, snap: Snapshot, refusal_retry_s: float):
        self.snap = snap
        self._instances = {i.id: i for i in snap.instances}
        self.busy = snap.pending is not None
        self.blocked = blocked_groups(snap, snap.instances, refusal_retry_s)
        self.home = snap.home  # the home layout, as this decision re-plans it

    def devices_of(self, instance: int) -> tuple[int, ...]:
        return self._instances[instance].devices

    @property
    def instances(self) -> tuple[InstanceView, ...]:
        return tuple(self._instances.values())

    def route(self, request: RequestView, inst: InstanceView) -> Route:
        self._instances[inst.id] = replace(inst, waiting=inst.waiting + (request,))
        return Route(request.id, inst.id)

    def start(self, devices: tuple[int, ...]) -> None:
        for i in self.instances:
            if set(i.devices) <= set(devices):
                self._instances[i.id] = replace(i, transforming=True)
        self.busy = True


def _offered(snap: Snapshot, event: Event) -> list[RequestView]:
    return list(snap.held) + ([event.request] if isinstance(event, Arrival) else [])


class StaticPolicy:
    """A layout that never changes; what no instance of it holds is rejected. Routing: `config.router`
    "latency" (router.py, needs `cost`) or "freeness" (the most room per request, as before)."""

    def __init__(self, config: PolicyConfig | None = None, cost: CostModel | None = None):
        self.config = config or PolicyConfig()
        self.cost = cost

    def decide(self, snap: Snapshot, event: Event) -> list[Action]:
        plan = Plan(snap, self.config.refusal_retry_s)
        actions: list[Action] = self._plan_home(plan)
        for r in _offered(snap, event):
            actions += self._place(plan, r)
        return actions + self._reshape(plan)

    def limit(self, snap: Snapshot) -> tuple[int, str]:
        """The most KV tokens one request may need here, and what sets that limit."""
        big = max(snap.instances, key=lambda i: (i.kv_capacity_tokens, -i.id))
        return big.kv_capacity_tokens, f"the largest instance of this layout (TP{big.tp})"

    @property
    def latency_router(self) -> bool:
        return self.config.router == "latency" and self.cost is not None

    def _plan_home(self, plan: Plan) -> list[Action]:
        return []

    def _place(self, plan: Plan, r: RequestView) -> list[Action]:
        limit, what = self.limit(plan.snap)
        if r.need_tokens > limit:
            return [Reject(r.id, f"the request needs {r.need_tokens} KV tokens (a {r.prompt_tokens}-token prompt "
                                 f"plus its output); {what} holds at most {limit}")]
        target = self._route(plan, r, [i for i in plan.instances if not i.transforming
                                       and i.kv_capacity_tokens >= r.need_tokens])
        if target is not None:
            return [plan.route(r, target)]
        return self._no_room(plan, r)

    def _route(self, plan: Plan, r: RequestView, holders: list[InstanceView]) -> InstanceView | None:
        """Where a request goes among the instances that hold it (None: none does)."""
        if not self.latency_router:
            return max(holders, key=lambda i: (freeness(i), -i.id), default=None)
        draining = {i.id for i in holders if i.draining}
        return (soonest(self.cost, holders, r, self.config, draining, need_room=False)
                or least_ttft(self.cost, holders, r, self.config, draining, self._wait(r)))

    def _wait(self, r: RequestView):
        return lambda i: wait_for_room(self.cost, i, r.need_tokens, self.config.max_num_seqs)

    def _no_room(self, plan: Plan, r: RequestView) -> list[Action]:
        return [Hold(r.id, "every instance that can hold it is transforming")]

    def _reshape(self, plan: Plan) -> list[Action]:
        return []


class GygesPolicy(StaticPolicy):
    """Keeps each host in the home layout the planner picks for the recent traffic (planner.py),
    moving towards it one cheap transformation at a time (homing.py); merges when a request fits no
    instance, or when a merge starts a long request sooner than queueing; routes each request where it
    starts soonest (router.py). One transformation at a time."""

    def __init__(self, cost: CostModel, config: PolicyConfig | None = None):
        super().__init__(config, cost)

    def limit(self, snap: Snapshot) -> tuple[int, str]:
        tp = degrees(snap)[-1]
        return snap.kv_capacity_by_tp[tp], f"the largest instance this cluster can form (TP{tp})"

    def start_layout(self, snap: Snapshot, window: tuple[RequestView, ...]) -> tuple[int, ...]:
        """The instance sizes to start each host in, for traffic like `window` (planner.start_layout)."""
        return start_layout(self.cost, snap, window, self.config)

    def _plan_home(self, plan: Plan) -> list[Action]:
        home = replan(self.cost, plan.snap, self.config)
        if home is None:
            return []
        plan.home = home
        return [SetHome(home)]

    def _place(self, plan: Plan, r: RequestView) -> list[Action]:
        """Among instances that can hold it, those that would start it soon with room for it now come
        first, then those of a merge in pre-copy that it can ride along with (`ride_along`); when none
        has room, a second instance of the needed degree may be merged rather than queueing it
        (`_queue_or_merge`), else it goes where it starts soonest."""
        holders = [i for i in plan.instances if not i.transforming and i.kv_capacity_tokens >= r.need_tokens]
        draining = {i.id for i in holders if i.draining}
        if self.latency_router:
            target = soonest(self.cost, holders, r, self.config, draining, need_room=True)
        else:
            roomy = [i for i in holders if room(i) >= r.need_tokens]
            target = max(roomy, key=lambda i: (freeness(i), -i.id), default=None)
        if target is not None:
            return [plan.route(r, target)]
        rider = ride_along(plan.snap, plan.instances, r, self.config.switch_tokens)
        if rider is not None:
            return [plan.route(r, rider)]
        return (self._queue_or_merge(plan, r, holders) if holders else None) or super()._place(plan, r)

    def _queue_or_merge(self, plan: Plan, r: RequestView, holders: list[InstanceView]) -> list[Action] | None:
        """No instance that holds `r` would start it soon: hold it for a merge of an aligned group of the
        smallest degree that holds it (chosen as forced merges are) when the merge and its own prefill
        there would bring its first token clearly sooner (MERGE_GAIN) than queueing on the best holder
        (its queued prefill work, and the wait for room where it is full). None: queue it."""
        snap, need = plan.snap, r.need_tokens
        queued = min(self._ttft(i, r) for i in holders)
        if plan.busy:
            group = pending_merge(snap, plan.instances)
            if group is None:
                return None
            left = price_merge(self.cost, snap, group, self.config).cost.time_s - (snap.time - snap.pending.started)
            if free_after_merge(snap, group) < need or queued <= MERGE_GAIN * (left + self._prefill(group.tp, r)):
                return None
            return [Hold(r.id, f"needs {need} KV tokens: waiting for the merge of devices {list(group.devices)}")]
        tp = next(t for t in degrees(snap) if snap.kv_capacity_by_tp[t] >= need)
        group = merge_for(snap, plan.instances, need, plan.blocked)
        if group is None or group.tp != tp or free_after_merge(snap, group) < need or not self._spare(plan, group):
            return None
        took = price_merge(self.cost, snap, group, self.config).cost.time_s
        if queued <= MERGE_GAIN * (took + self._prefill(tp, r)):
            return None
        plan.start(group.devices)
        return [Merge(group.devices, f"request {r.id} needs {need} KV tokens: its first token comes in {queued:.1f} s "
                                     f"on the instances that hold it, a merge takes {took:.1f} s"),
                Hold(r.id, f"waiting for the merge of devices {list(group.devices)}")]

    def _spare(self, plan: Plan, group) -> bool:
        """A merge that only starts a request sooner leaves at least a quarter of its host in instances no
        larger than home's largest: the rest of the traffic keeps instances it is served best on."""
        home = max(plan.home.sizes) if plan.home else 1
        host = group.devices[0] // plan.snap.host_devices
        small = sum(i.tp for i in plan.instances if i.devices[0] // plan.snap.host_devices == host
                    and i.tp <= home and not set(i.devices) <= set(group.devices))
        return small >= plan.snap.host_devices / 4

    def _ttft(self, inst: InstanceView, r: RequestView) -> float:
        """When `r`'s first token would come on `inst`: its queued prefill work, and where it is full,
        the wait for room (router's prediction with the freeness router too: this is about merging)."""
        t = predicted_ttft(self.cost, inst, r, self.config)
        return max(t, wait_for_room(self.cost, inst, r.need_tokens, self.config.max_num_seqs)) if room(inst) < r.need_tokens else t

    def _prefill(self, tp: int, r: RequestView) -> float:
        return self.cost.prefill_time(tp, r.prompt_tokens, self.config.max_batched_tokens)

    def _no_room(self, plan: Plan, r: RequestView) -> list[Action]:
        """No instance can ever hold it as it is: merge the group that will (forced, so no cost test:
        the alternative is never serving it), and hold the request until the merged instance is up."""
        if plan.busy:
            return [Hold(r.id, f"needs {r.need_tokens} KV tokens: waiting for the transformation in progress")]
        group = merge_for(plan.snap, plan.instances, r.need_tokens, plan.blocked)
        if group is None:
            return [Hold(r.id, f"needs {r.need_tokens} KV tokens: no group of idle instances can merge yet")]
        plan.start(group.devices)
        reason = f"request {r.id} needs {r.need_tokens} KV tokens, more than any instance holds"
        return [Merge(group.devices, reason), Hold(r.id, f"waiting for the merge of devices {list(group.devices)}")]

    def _reshape(self, plan: Plan) -> list[Action]:
        if plan.home is None:
            return []
        actions: list[Action] = drains(plan.snap, plan.instances, plan.home)
        move = None if plan.busy else toward_home(self.cost, plan.snap, plan.instances, plan.home, self.config,
                                                  plan.blocked)
        if move is not None:
            plan.start(move.devices if isinstance(move, Merge) else plan.devices_of(move.instance))
            actions.append(move)
        return actions
