"""Which merge or split to start, if any: pure choices over a snapshot, priced by the cost model."""
import math
from dataclasses import dataclass

from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel, TransformCost
from gyges.policy.load import freeness, promised, remaining_work, requests_of, room, serving_load, utilization
from gyges.policy.snapshot import InstanceView, RequestView, Snapshot


@dataclass(frozen=True)
class Group:
    """An aligned group of devices and the instances that exactly cover it."""
    devices: tuple[int, ...]
    members: tuple[InstanceView, ...]

    @property
    def tp(self) -> int:
        return len(self.devices)

    @property
    def requests(self) -> tuple[RequestView, ...]:
        return tuple(r for m in self.members for r in requests_of(m))


def degrees(snap: Snapshot) -> list[int]:
    """TP degrees an instance can have here: powers of two up to max_tp, inside one host."""
    return [t for t in sorted(snap.kv_capacity_by_tp) if t <= min(snap.max_tp, snap.host_devices)]


def blocked_groups(snap: Snapshot, instances: tuple[InstanceView, ...], retry_s: float) -> frozenset[tuple[int, ...]]:
    """Device groups whose transformation the planner refused less than `retry_s` ago, with the same
    requests still running on them: the planner would refuse it again."""
    def running(devices) -> frozenset[int]:
        return frozenset(r.id for i in instances if set(i.devices) <= set(devices) for r in i.running)
    return frozenset(f.devices for f in snap.refused
                     if snap.time - f.time < retry_s and running(f.devices) == f.running)


def mergeable(snap: Snapshot, instances: tuple[InstanceView, ...], tp: int,
              blocked: frozenset[tuple[int, ...]] = frozenset()) -> list[Group]:
    """Aligned groups of `tp` devices in one host covering two or more whole instances, none transforming
    nor `blocked`."""
    out = []
    for start in range(0, snap.devices - tp + 1, tp):
        if start // snap.host_devices != (start + tp - 1) // snap.host_devices:
            continue
        span = range(start, start + tp)
        members = tuple(i for i in instances if any(d in span for d in i.devices))
        if (sum(m.tp for m in members) == tp and len(members) > 1 and all(set(m.devices) <= set(span) for m in members)
                and not any(m.transforming for m in members) and tuple(span) not in blocked):
            out.append(Group(tuple(span), members))
    return out


def kv_to_move(group: Group) -> float:
    """KV tokens that leave their device: a TP-t member keeps t/T of each request's KV where it is."""
    return sum(r.computed_tokens * (1 - m.tp / group.tp) for m in group.members for r in m.running)


def merge_for(snap: Snapshot, instances: tuple[InstanceView, ...], need: int,
              blocked: frozenset[tuple[int, ...]] = frozenset()) -> Group | None:
    """The group to merge for a request no instance can hold: the smallest degree whose instance holds
    it; among its groups, first one with room for it now (else it waits for work to drain), then the
    least KV to move (a shorter transformation), then the least work left (fewer requests stalled)."""
    for tp in degrees(snap):
        cap = snap.kv_capacity_by_tp[tp]
        groups = mergeable(snap, instances, tp, blocked) if cap >= need else []
        if groups:
            def key(g: Group):
                return (free_after_merge(snap, g) < need, kv_to_move(g),
                        sum(remaining_work(m) for m in g.members), g.devices[0])
            return min(groups, key=key)
    return None


def free_after_merge(snap: Snapshot, group: Group) -> int:
    """KV tokens the merged instance has left once its members' requests grow to their needs."""
    return snap.kv_capacity_by_tp[group.tp] - sum(promised(m) for m in group.members)


def wait_for_room(cost: CostModel, inst: InstanceView, need: int, max_batch: int) -> float:
    """Seconds until `inst` has room for `need` more KV tokens. A lower bound, kept simple: all its
    requests (queued ones too) decode from now, one token a step at the step time of its present batch,
    and each frees the KV it was promised when it reaches its need, shortest remainder first."""
    short = need - room(inst)
    if short <= 0:
        return 0.0
    reqs = sorted(requests_of(inst), key=lambda r: r.need_tokens - r.computed_tokens)
    batch = [max(r.computed_tokens, r.prompt_tokens) for r in reqs][:max_batch]
    freed = 0
    for r in reqs:
        freed += r.need_tokens
        if freed >= short:
            return cost.decode_time(inst.tp, batch, r.need_tokens - r.computed_tokens)
    return math.inf  # its requests' needs do not add up to what it lacks: nothing known will free it


def pending_merge(snap: Snapshot, instances: tuple[InstanceView, ...]) -> Group | None:
    """The group of the merge in progress (None when none is)."""
    p = snap.pending
    if p is None or p.kind != "merge":
        return None
    return Group(p.devices, tuple(i for i in instances if set(i.devices) <= set(p.devices)))


def ride_along(snap: Snapshot, instances: tuple[InstanceView, ...], request: RequestView,
               margin: int) -> InstanceView | None:
    """An instance of the merge in pre-copy that can take `request` now, so that it starts at once and
    moves with the others at the switch instead of waiting out the merge (with two devices, every
    arrival would). Only where the merge still goes through afterwards: the merged instance holds
    everything promised on its members plus every held request (those held for it among them), and
    at the switch no device runs out of pages. A device receives its share of the other members' KV
    before it frees what it sends away, so member m needs k * promised(m) + promised(others) <= the
    merged capacity. `margin`: KV tokens added to each request for its partly filled last block."""
    group = pending_merge(snap, instances)
    if group is None or snap.pending.switching:
        return None
    members, cap = group.members, snap.kv_capacity_by_tp[group.tp]
    held = sum(h.need_tokens + margin for h in snap.held if h.id != request.id)

    def holds(target: InstanceView) -> bool:
        load = [promised(m) + margin * len(requests_of(m))
                + (request.need_tokens + margin if m is target else 0) for m in members]
        total = sum(load)
        return total + held <= cap and all(total + (len(members) - 1) * x <= cap for x in load)

    fits = [m for m in members if room(m) >= request.need_tokens + margin and holds(m)]
    return max(fits, key=lambda i: (freeness(i), -i.id), default=None)


@dataclass(frozen=True)
class Reshape:
    group: Group
    parts: int            # 1 for a merge into group; > 1 for a split of its one member
    before: float         # tokens/s the devices serve now
    after: float          # tokens/s they would serve
    cost: TransformCost

    def net(self, horizon_s: float) -> float:
        """Tokens gained over `horizon_s` less the tokens not produced during the stall."""
        return (self.after - self.before) * horizon_s - self.before * self.cost.stall_s

    def worth(self, config: PolicyConfig) -> bool:
        """A merge must serve `gain_margin` more than its members and repay its stall within the dwell
        time. A split goes back to the small instances Gyges keeps by default: a merged instance stays
        only while it still serves `gain_margin` more than its parts would (what a merge of them would
        need), counting the split's stall against the parts. The two tests are each other's negation at
        one load, so a layout does not flip back and forth under it; the dwell time bounds how often
        a changing load can flip it."""
        if self.parts == 1:
            return self.after > self.before * (1 + config.gain_margin) and self.net(config.min_dwell_s) > 0
        lost = self.before * self.cost.stall_s / config.min_dwell_s if config.min_dwell_s > 0 else 0.0
        return self.after * (1 + config.gain_margin) - lost > self.before


def _moved(cost: CostModel, requests, keep: float, switch_tokens: int) -> tuple[float, float]:
    """(bytes moved, bytes in the switch) for running `requests` keeping fraction `keep` of their KV in place."""
    kvb = cost.model.kv_bytes_per_token * (1 - keep)
    return (sum(r.computed_tokens for r in requests) * kvb,
            sum(min(r.computed_tokens, switch_tokens) for r in requests) * kvb)


def price_merge(cost: CostModel, snap: Snapshot, group: Group, config: PolicyConfig) -> Reshape:
    """Serving now: each member its own requests (a KV-starved member runs a small batch); merged:
    all of them in one instance with the merged capacity."""
    before = sum(cost.throughput(m.tp, serving_load(requests_of(m)), m.kv_capacity_tokens, config.max_num_seqs,
                                 config.max_batched_tokens) for m in group.members)
    after = cost.throughput(group.tp, serving_load(group.requests), snap.kv_capacity_by_tp[group.tp],
                            config.max_num_seqs, config.max_batched_tokens)
    moved = switch = 0.0
    for m in group.members:
        b, s = _moved(cost, m.running, m.tp / group.tp, config.switch_tokens)
        moved, switch = moved + b, switch + s
    return Reshape(group, 1, before, after, cost.transform_cost(moved, switch, group.tp))


def pressure_merge(cost: CostModel, snap: Snapshot, instances: tuple[InstanceView, ...],
                   config: PolicyConfig, blocked: frozenset[tuple[int, ...]] = frozenset()) -> Reshape | None:
    """A merge that pays although every request fits somewhere: instances overcommitted on KV run
    small batches, and one merged instance (which also turns the weight shards it drops into KV) may
    serve more. Only groups whose members are all starved qualify: at light load a merged instance
    steps faster, but the load, not the step rate, bounds what is served, and an idle member serves
    the next arrivals better on its own. The smallest degree that pays wins, then the largest gain."""
    for tp in degrees(snap)[1:]:
        priced = [price_merge(cost, snap, g, config) for g in mergeable(snap, instances, tp, blocked)
                  if all(room(m) < 0 for m in g.members)]
        worth = [r for r in priced if r.worth(config)]
        if worth:
            return max(worth, key=lambda r: (r.net(config.min_dwell_s), -r.group.devices[0]))
    return None


def pack(requests: tuple[RequestView, ...], parts: int, capacity: int) -> list[list[RequestView]] | None:
    """Requests dealt to `parts` instances of `capacity` KV tokens, largest need first, each to the part
    with the most room (balanced parts); None if some request fits no part."""
    bins: list[list[RequestView]] = [[] for _ in range(parts)]
    free = [capacity] * parts
    for r in sorted(requests, key=lambda r: (-r.need_tokens, r.id)):
        i = max(range(parts), key=lambda j: (free[j], -j))
        if free[i] < r.need_tokens:
            return None
        bins[i].append(r)
        free[i] -= r.need_tokens
    return bins


def keeps_balance(part_utilizations: list[float], other_utilizations: list[float], band: float) -> bool:
    """A split must not make a part the cluster's hot spot: no part more promised than the busiest
    other instance, or than `band`. Merging happens above 100% of an instance and splitting only
    below `band`: the gap is what stops alternating long and short requests from thrashing."""
    return max(part_utilizations) <= max([band, *other_utilizations])


def price_split(cost: CostModel, snap: Snapshot, inst: InstanceView, parts: int, config: PolicyConfig) -> Reshape:
    """Compared full, not at the present load: a split gives devices back for the load to come, which
    a reactive policy cannot see, so the question is which layout serves more requests like these
    (or like the output estimate when it is idle) once busy. (At the present load a lightly loaded
    merged instance always looks better on a GPU, where TP2 halves the weight reads of a step, and
    never would be split; but then the load, not the step rate, bounds what is served.)"""
    t = inst.tp // parts
    full = config.max_num_seqs * inst.tp
    load = serving_load(requests_of(inst), count=full, idle_need=config.output_estimate)
    before = cost.throughput(inst.tp, load, inst.kv_capacity_tokens, config.max_num_seqs, config.max_batched_tokens)
    after = parts * cost.throughput(t, load, snap.kv_capacity_by_tp[t], config.max_num_seqs, config.max_batched_tokens)
    kv, switch = _moved(cost, inst.running, t / inst.tp, config.switch_tokens)
    weights = inst.tp * (cost.model.weight_bytes(t) - cost.model.weight_bytes(inst.tp))
    return Reshape(Group(inst.devices, (inst,)), parts, before, after, cost.transform_cost(kv + weights, switch, inst.tp))


def best_split(cost: CostModel, snap: Snapshot, instances: tuple[InstanceView, ...],
               config: PolicyConfig, blocked: frozenset[tuple[int, ...]] = frozenset()) -> Reshape | None:
    """A split of a merged instance that has served its dwell time, whose running requests all fit the
    parts (and each queued one fits a part alone: it queues there), that keeps the balance (a long
    request left alone at 90% of a part, beside instances half full, keeps it merged: the next long
    arrival would merge it again), and whose parts serve more, or that is idle."""
    best = None
    for inst in instances:
        if (inst.tp == 1 or inst.transforming or inst.devices in blocked
                or snap.time - inst.formed_at < config.min_dwell_s):
            continue
        # an idle one goes back to the small instances Gyges keeps by default: priced against requests
        # of the output estimate, which may not fit a part at all, it would otherwise never split
        idle = not requests_of(inst)
        others = [utilization(i) for i in instances if i is not inst and not i.transforming]
        for t in (t for t in degrees(snap) if t < inst.tp):
            parts, cap = inst.tp // t, snap.kv_capacity_by_tp[t]
            bins = pack(inst.running, parts, cap)  # queued requests queue on the parts instead
            if bins is None or any(r.need_tokens > cap for r in inst.waiting):
                continue
            if not keeps_balance([sum(r.need_tokens for r in b) / cap for b in bins], others,
                                 config.split_max_utilization):
                continue
            r = price_split(cost, snap, inst, parts, config)
            if (idle or r.worth(config)) and (best is None or r.net(config.min_dwell_s) > best.net(config.min_dwell_s)):
                best = r
    return best
