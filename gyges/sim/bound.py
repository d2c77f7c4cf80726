"""How many requests per second any layout can serve on a trace, at full utilization (no SLO, no
queueing), from the cost model's saturated throughput: the rate a policy sustains at the SLO is below
it; it says which gains a policy could possibly show.

- `rate_bound`: any layout, changing at will: each request served at the degree that serves it with
  the fewest device-seconds.
- `layout_bounds`: one layout for the whole trace (the best static one) against each phase served by
  its own best layout (a planner that follows the phases), both priced as the planner prices layouts.
- `layout_rates`: every layout's own bound, which lets a rate search skip a layout that cannot beat a
  rate another one already sustains.
"""
from dataclasses import dataclass

from gyges.policy.config import PolicyConfig
from gyges.policy.cost_model import CostModel
from gyges.policy.planner import class_rates, classify, device_seconds, layouts, saturated
from gyges.policy.snapshot import RequestView


@dataclass(frozen=True)
class RateBound:
    per_device_tok_s: dict[int, float]   # TP degree -> tokens/s per device, on the requests that degree holds
    best_tp: dict[int, int]              # smallest degree holding a request -> the degree that serves it best
    max_rate: float                      # requests/s of the whole cluster at full utilization


def rate_bound(cost: CostModel, capacity_by_tp: dict[int, int], requests: list[tuple[int, int]], devices: int,
               max_num_seqs: int, max_batched_tokens: int) -> RateBound:
    """Requests ((prompt, output) pairs) are grouped by the smallest degree that holds them; each group
    is served at the degree (that holds it) with the most tokens/s per device, and the cluster's
    device-seconds bound the rate."""
    degrees = sorted(capacity_by_tp)
    groups: dict[int, list[tuple[int, int]]] = {}
    for p, o in requests:
        tp = next((t for t in degrees if capacity_by_tp[t] >= p + o), None)
        if tp is None:
            raise ValueError(f"a request of {p + o} tokens fits no degree up to TP{degrees[-1]}")
        groups.setdefault(tp, []).append((p, p + o))
    per_device, best = {}, {}
    device_s = 0.0
    for small, group in sorted(groups.items()):
        rates = {t: saturated(cost, t, group, capacity_by_tp[t], max_num_seqs, max_batched_tokens) / t
                 for t in degrees if t >= small}
        if small == degrees[0]:
            per_device = rates
        best[small] = max(rates, key=lambda t: (rates[t], -t))
        device_s += sum(n for _, n in group) / rates[best[small]]
    return RateBound(per_device, best, devices * len(requests) / device_s)


@dataclass(frozen=True)
class LayoutBounds:
    best_static: tuple[int, ...]     # the one layout per host that serves the whole trace fastest
    static_rate: float               # its requests/s at full utilization
    phase_layouts: list[tuple[int, ...]]  # each phase's own best layout
    phased_rate: float               # requests/s with each phase on its own best layout


def layout_bounds(cost: CostModel, capacity_by_tp: dict[int, int], phases: list[list[tuple[int, int]]], host: int,
                  devices: int, config: PolicyConfig) -> LayoutBounds:
    """Phases of (prompt, output) requests on `devices` in hosts of `host`: every host laid out alike."""
    priced = _priced(cost, capacity_by_tp, phases, host, config)
    n = sum(len(r) for r in phases)
    best = min(priced[0], key=lambda lay: sum(p[lay] for p in priced))
    return LayoutBounds(best, devices * n / sum(p[best] for p in priced),
                        [min(p, key=p.get) for p in priced], devices * n / sum(min(p.values()) for p in priced))


def layout_rates(cost: CostModel, capacity_by_tp: dict[int, int], phases: list[list[tuple[int, int]]], host: int,
                 devices: int, config: PolicyConfig) -> dict[tuple[int, ...], float]:
    """Each layout's requests/s at full utilization over all phases: no static layout sustains more at
    the SLO, so a rate search can skip a layout whose bound is below a rate another one sustains."""
    priced = _priced(cost, capacity_by_tp, phases, host, config)
    n = sum(len(r) for r in phases)
    return {lay: devices * n / sum(p[lay] for p in priced) for lay in priced[0]}


def _priced(cost: CostModel, capacity_by_tp: dict[int, int], phases: list[list[tuple[int, int]]], host: int,
            config: PolicyConfig) -> list[dict[tuple[int, ...], float]]:
    """Per phase: layout -> device-seconds of one host serving the whole phase (the planner's pricing)."""
    degrees = [t for t in sorted(capacity_by_tp) if t <= host and capacity_by_tp[t] > 0]
    caps = {t: capacity_by_tp[t] for t in degrees}
    cands = layouts(host, degrees)
    priced = []
    for reqs in phases:
        window = tuple(RequestView(i, p, p + o) for i, (p, o) in enumerate(reqs))
        classes = classify(window, caps)
        rates = class_rates(cost, classes, degrees, caps, config)
        priced.append({lay: device_seconds(lay, classes, rates, degrees) for lay in cands})
    return priced
