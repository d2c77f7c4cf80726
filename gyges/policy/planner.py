"""The home layout: which instance sizes each host should have for the recent traffic (pure).

The window of recent arrivals is grouped into classes of alike requests (the smallest TP degree that
holds one, and whether its output is long). Each class is priced at each degree by the cost model's
saturated waves (`CostModel.throughput`), and each candidate layout of a host (every aligned mix of
sizes whose instances hold their weights) by how long its instances take to serve the window's work
when each class is shared out among the instances that hold it as well as possible (a small linear
program, `lp.served_fraction`). A class no instance of the layout holds is served by a merge: priced
at the smallest degree that holds it, on devices taken from the rest. The layout with the fewest
device-seconds is the best; it becomes home once the present home has lost by `home_margin` at
`home_persistence` re-plans in a row, so noise does not flip the layout.
"""
import math
from dataclasses import dataclass, replace

import numpy as np

from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel, ServingLoad
from gyges.policy.lp import served_fraction
from gyges.policy.snapshot import HomeLayout, RequestView, Snapshot

LONG_OUTPUT = 256  # output tokens from which a request counts as decode-heavy


@dataclass(frozen=True)
class RequestClass:
    degree: int            # the smallest TP degree whose instance holds such a request
    long_output: bool
    requests: tuple[tuple[int, int], ...]  # (prompt, KV need) of each
    weights: tuple[float, ...] = ()        # each request's weight (recent ones more); () : all 1

    @property
    def tokens(self) -> float:
        """Prompt and output tokens to serve (KV need: prompt + output), each request by its weight."""
        if not self.weights:
            return sum(need for _, need in self.requests)
        return sum(w * need for (_, need), w in zip(self.requests, self.weights))


def smallest_degree(need: int, capacity_by_tp: dict[int, int]) -> int | None:
    return next((t for t in sorted(capacity_by_tp) if capacity_by_tp[t] >= need), None)


def classify(window: tuple[RequestView, ...], capacity_by_tp: dict[int, int], now: float | None = None,
             half_life_s: float = 0.0) -> list[RequestClass]:
    """The window's requests by (smallest degree that holds them, long output); requests no degree
    holds are left out (they are rejected). With a half-life, a request's work weighs 2^(-age/half-life)
    at `now`: the traffic of the last seconds decides more than the minute before (a window of mostly
    long documents that ended a few seconds ago would otherwise keep their layout for most of a minute)."""
    groups: dict[tuple[int, bool], list[tuple[tuple[int, int], float]]] = {}
    for r in window:
        t = smallest_degree(r.need_tokens, capacity_by_tp)
        if t is not None:
            w = 0.5 ** ((now - r.arrived) / half_life_s) if half_life_s > 0 and now is not None else 1.0
            groups.setdefault((t, r.need_tokens - r.prompt_tokens >= LONG_OUTPUT), []).append(
                ((r.prompt_tokens, r.need_tokens), w))
    return [RequestClass(t, long, tuple(x for x, _ in reqs), tuple(w for _, w in reqs) if half_life_s > 0 else ())
            for (t, long), reqs in sorted(groups.items())]


def saturated(cost: CostModel, tp: int, requests: list[tuple[int, int]], kv_capacity: int, max_num_seqs: int,
              max_batched_tokens: int) -> float:
    """Tokens/s (prompt and output) of one TP-`tp` instance kept full of requests like these ((prompt,
    KV need) pairs), in the waves `CostModel.throughput` prices."""
    k = len(requests)  # plain means: statistics.mean sums exactly, in fractions, a hundred times slower
    load = ServingLoad(max_num_seqs, sum(n for _, n in requests) / k, sum((p + n) / 2 for p, n in requests) / k,
                       sum(p for p, _ in requests) / k)
    return cost.throughput(tp, load, kv_capacity, max_num_seqs, max_batched_tokens)


def class_rates(cost: CostModel, classes: list[RequestClass], degrees: list[int], capacity_by_tp: dict[int, int],
                config: PolicyConfig) -> np.ndarray:
    """[class, degree] tokens/s of one instance of that degree serving the class (0 where it cannot hold it)."""
    rates = np.zeros((len(classes), len(degrees)))
    for i, c in enumerate(classes):
        for j, t in enumerate(degrees):
            if t >= c.degree:
                rates[i, j] = saturated(cost, t, list(c.requests), capacity_by_tp[t], config.max_num_seqs,
                                        config.max_batched_tokens)
    return rates


def layouts(host: int, degrees: list[int]) -> list[tuple[int, ...]]:
    """Every way to cut a host into instances of these degrees (sizes largest first)."""
    def cut(n: int, largest: int) -> list[tuple[int, ...]]:
        if n == 0:
            return [()]
        return [(s, *rest) for s in sorted(degrees, reverse=True) if s <= min(n, largest) for rest in cut(n - s, s)]
    return cut(host, host)


def device_seconds(layout: tuple[int, ...], classes: list[RequestClass], rates: np.ndarray,
                   degrees: list[int]) -> float:
    """Device-seconds a host cut as `layout` spends on the window's work: its devices for as long as its
    instances take (work shared out at best), plus, for classes none of them holds, a merge's devices
    at the smallest degree that holds them."""
    counts = np.array([layout.count(t) for t in degrees], dtype=float)
    work = np.array([c.tokens for c in classes], dtype=float)
    present = rates * (counts > 0)
    held = present.any(axis=1)
    extra = sum(c.tokens * c.degree / rates[i, degrees.index(c.degree)] for i, c in enumerate(classes) if not held[i])
    if not held.any():
        return extra
    lam, _ = served_fraction(present[held], work[held], counts)
    return (sum(layout) / lam if lam > 0 else math.inf) + extra


def price_layouts(cost: CostModel, snap: Snapshot, window: tuple[RequestView, ...],
                  config: PolicyConfig) -> list[tuple[tuple[int, ...], float]]:
    """Every candidate layout of a host with its device-seconds for the window, best first."""
    degrees = holding_degrees(snap)
    classes = classify(window, {t: snap.kv_capacity_by_tp[t] for t in degrees}, snap.time, config.plan_half_life_s)
    if not classes:
        return []
    rates = class_rates(cost, classes, degrees, snap.kv_capacity_by_tp, config)
    priced = [(lay, device_seconds(lay, classes, rates, degrees)) for lay in layouts(snap.host_devices, degrees)]
    return sorted(priced, key=lambda p: (p[1], len(p[0])))


def holding_degrees(snap: Snapshot) -> list[int]:
    """Degrees an instance can have on a host whose instances hold their weights (some KV left)."""
    return [t for t in sorted(snap.kv_capacity_by_tp) if t <= min(snap.max_tp, snap.host_devices)
            and snap.kv_capacity_by_tp[t] > 0]


def window_of(snap: Snapshot, config: PolicyConfig) -> tuple[RequestView, ...]:
    """The arrivals of the last `plan_window_s`, or the last `plan_min_requests` if that is more."""
    recent = snap.recent
    start = next((i for i, r in enumerate(recent) if r.arrived >= snap.time - config.plan_window_s), len(recent))
    return recent[min(start, max(0, len(recent) - config.plan_min_requests)):]


def host_sizes(snap: Snapshot) -> tuple[int, ...]:
    """The instance sizes of the first host now, largest first."""
    return tuple(sorted((i.tp for i in snap.instances if i.devices[0] < snap.host_devices), reverse=True))


def replan(cost: CostModel, snap: Snapshot, config: PolicyConfig) -> HomeLayout | None:
    """The planner's next state, or None when it is not due. Due when no home is set yet (the present
    layout, or the pinned one, becomes home), and every `replan_s` after."""
    home = snap.home
    if config.home_layout is not None:
        pinned = tuple(sorted(config.home_layout, reverse=True))
        if home is None or home.sizes != pinned:
            return HomeLayout(pinned, snap.time, snap.time, "pinned by the operator (--home-layout)", pinned=True)
        return None
    if home is None:
        return HomeLayout(host_sizes(snap), snap.time, snap.time, "the start layout")
    if snap.time - home.planned_at < config.replan_s:
        return None
    window = window_of(snap, config)
    if len(window) < config.plan_min_requests:
        return replace(home, planned_at=snap.time)
    priced = price_layouts(cost, snap, window, config)
    if not priced:
        return replace(home, planned_at=snap.time)
    best, best_s = priced[0]
    now_s = dict(priced).get(home.sizes, math.inf)
    state = replace(home, planned_at=snap.time, priced=tuple(priced))
    if best == home.sizes or best_s >= now_s * (1 - config.home_margin):
        return replace(state, challenger=None, streak=0)
    streak = home.streak + 1  # re-plans in a row the home lost by the margin (to the best of each)
    if streak < config.home_persistence:
        return replace(state, challenger=best, streak=streak)
    reason = (f"{len(window)} recent requests take {best_s:.0f} device-seconds on {_name(best)}, "
              f"{now_s:.0f} on {_name(home.sizes)}")
    return HomeLayout(best, snap.time, snap.time, reason, tuple(priced))


def start_layout(cost: CostModel, snap: Snapshot, window: tuple[RequestView, ...],
                 config: PolicyConfig) -> tuple[int, ...]:
    """The layout to start a host in for traffic like `window` (its first minute, say): the best priced
    one, or with no traffic known, every device in the smallest instance that holds its weights."""
    if config.home_layout is not None:
        return tuple(sorted(config.home_layout, reverse=True))
    priced = price_layouts(cost, snap, window, replace(config, plan_half_life_s=0.0))  # all alike: none is old
    if priced:
        return priced[0][0]
    smallest = holding_degrees(snap)[0]
    return (smallest,) * (snap.host_devices // smallest)


def _name(sizes: tuple[int, ...]) -> str:
    return "+".join(map(str, sizes))
