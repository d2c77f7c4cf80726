"""One simulated comparison: a setting (the cluster, the SLO and the workload, a trace or a scenario),
every policy to compare on it, and each one's highest rate within the SLO. Shared by `gyges simulate
--compare` and benchmarks/sim_grid.py."""
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from gyges.bench.slo import Baseline, Line, attains, class_of, meets_slo, per_class
from gyges.bench.traces import TraceRequest, load_trace
from gyges.bench.workload import scale_trace, spread_ties, time_scale_for_rate
from gyges.policy import make_policy
from gyges.sim import layouts, scenarios
from gyges.sim.bound import layout_bounds, rate_bound
from gyges.sim.peers import peers
from gyges.sim.run import GiveUp, Setup, SimResult, simulate, unloaded
from gyges.sim.sweep import max_rate

ATTAINMENT = 0.9  # the share of requests that must meet the SLO at a sustained rate


@dataclass
class Setting:
    """The cluster, the SLO and the workload: a shipped trace (its first `duration` seconds, arrivals
    rescaled to each rate) or a scenario (generated at each rate)."""
    setup: Setup
    slo: dict[str, float]
    trace: str | None = None
    scenario: str | None = None
    duration: float | None = None
    requests: list[TraceRequest] = field(init=False)   # at the trace's own rate, or the scenario's at load 1
    native: float = field(init=False)                  # where the rate search starts

    def __post_init__(self):
        if self.scenario:
            self._base = scenarios.base_rate(self.scenario, self.setup)
            self.requests, self.native = self.workload(None), self._base / 2
            return
        trace = load_trace(self.trace)
        if self.duration is not None:
            trace = [r for r in trace if r.arrival_s - trace[0].arrival_s < self.duration]
        self.requests = spread_ties(trace)
        self.native = (len(trace) - 1) / (trace[-1].arrival_s - trace[0].arrival_s)

    def workload(self, rate: float | None) -> list[TraceRequest]:
        if self.scenario:
            return scenarios.generate(self.scenario, self.setup, (rate or self._base) / self._base)
        return self.requests if rate is None else scale_trace(self.requests, time_scale_for_rate(self.requests, rate)).requests

    def policies(self) -> dict[str, tuple]:
        return policies(self.setup, max(r.input_len + r.output_len for r in self.requests))

    def phases(self) -> list[list[TraceRequest]] | None:
        return scenarios.phases_of(self.scenario, self.requests) if self.scenario else None


def search(setting: Setting, name: str, pols: dict[str, tuple] | None = None, progress: bool = False,
           start: float | None = None, factor: float = 2.0) -> tuple[dict, SimResult | None]:
    """The policy's highest rate at the SLO, with the figures of its run there (and that run); the
    search starts at `start` (default: the workload's own rate) and brackets by `factor`."""
    pols = pols or setting.policies()
    ref, caps, best, shown = unloaded_of(setting.setup), setting.setup.kv_capacities(), {}, {}

    def meets(rate: float) -> bool:
        reqs = setting.workload(rate)
        pol, sizes, on = pols[name]
        res = simulate(reqs, on, pol, sizes, progress=progress, give_up=give_up(len(reqs), setting.slo, ref))
        s = summary(res, setting.slo, ref, caps)
        if s["attains"] and rate >= best.get("rate", 0.0):
            best.update(s, rate=rate)
            shown["run"] = res
        return s["attains"]

    rate = max_rate(meets, start or setting.native, factor=factor)
    return {"max_rate_at_slo": rate, **{k: v for k, v in best.items() if k != "rate"}}, shown.get("run")


def run_once(setting: Setting, name: str, rate: float | None, progress: bool = False) -> tuple[dict, SimResult]:
    """One run of a policy at `rate` (None: the workload's own)."""
    pol, sizes, on = setting.policies()[name]
    res = simulate(setting.workload(rate), on, pol, sizes, progress=progress)
    return summary(res, setting.slo, unloaded_of(setting.setup), setting.setup.kv_capacities()), res


def policies(setup: Setup, longest_need: int) -> dict[str, tuple]:
    """Name -> (policy, per-host layout, setup): Gyges (starting in its planner's layout for the first
    window: None), every static candidate with the latency-aware router and with room-per-request
    routing (`-freeness`), the peers."""
    cost, config = setup.cost(), setup.policy_config()
    out = {"gyges": (make_policy("gyges", cost, config), None, setup)}
    for name, sizes in layouts.candidates(setup.host, setup.max_tp).items():
        if cost.kv_capacity_tokens(min(sizes)) > 0:  # every instance holds its weights
            out[name] = (make_policy("static", cost, config), sizes, setup)
            out[f"{name}-freeness"] = (make_policy("static", cost, replace(config, router="freeness")), sizes, setup)
    return out | peers(setup, longest_need)


def unloaded_of(setup: Setup) -> Callable[[int, int], tuple[float, float]]:
    """(prompt, output) -> the request's unloaded TTFT and TPOT on `setup`, cached: the SLO's reference."""
    cost, caps = setup.cost(), setup.kv_capacities()
    return functools.cache(lambda prompt, output: unloaded(cost, caps, prompt, output, setup.max_batched_tokens))


def give_up(n: int, slo: dict[str, float], ref: Callable[[int, int], tuple[float, float]]) -> GiveUp:
    """Stop a rate probe once its attainment can no longer reach ATTAINMENT over `n` requests."""
    def limits(prompt: int, output: int) -> tuple[float, float]:
        t0, p0 = ref(prompt, output)
        return slo.get("ttft", math.inf) * t0, slo.get("tpot", math.inf) * p0
    return GiveUp(limits, n - math.ceil(ATTAINMENT * n - 1e-9))


def bound_of(setup: Setup, trace, results: dict[str, dict], phases: list[list] | None = None) -> dict:
    """The rate no layout can exceed on this trace (`rate_bound`), printed beside the best static
    layout that served every request (the most any policy could gain over it), and the bounds of one
    layout for the whole trace and of each phase on its own best layout (`layout_bounds`)."""
    b = rate_bound(setup.cost(), setup.kv_capacities(), [(r.input_len, r.output_len) for r in trace], setup.gpus,
                   setup.max_num_seqs, setup.max_batched_tokens)
    lb = layout_bounds(setup.cost(), setup.kv_capacities(),
                       [[(r.input_len, r.output_len) for r in ph] for ph in (phases or [trace])], setup.host,
                       setup.gpus, setup.policy_config())
    statics = {n: r["max_rate_at_slo"] for n, r in results.items() if n.startswith("static") and r.get("rejected") == 0}
    best = max(statics, key=statics.get, default=None)
    out = {"per_device_tok_s": b.per_device_tok_s, "best_tp": b.best_tp, "max_rate": b.max_rate,
           "best_static": best, "max_over_best_static": b.max_rate / statics[best] if best and statics[best] else None,
           "static_layout_bound": {"layout": list(lb.best_static), "max_rate": lb.static_rate},
           "phased_layout_bound": {"layouts": [list(x) for x in lb.phase_layouts], "max_rate": lb.phased_rate}}
    per = ", ".join(f"TP{t} {v:.0f}" for t, v in b.per_device_tok_s.items())
    print(f"bound (cost model, full utilization, no SLO): tokens/s per device on the requests TP1 holds: {per}; "
          f"no layout serves more than {b.max_rate:.3g} req/s"
          + (f", {out['max_over_best_static']:.2f}x {best} at the SLO" if out["max_over_best_static"] else ""), flush=True)
    print(f"layout bounds (the planner's pricing): one layout ({'+'.join(map(str, lb.best_static))}) "
          f"{lb.static_rate:.3g} req/s; each phase on its own best layout "
          f"({', '.join('+'.join(map(str, x)) for x in lb.phase_layouts)}) {lb.phased_rate:.3g} req/s", flush=True)
    return out


def summary(res: SimResult, slo: dict[str, float], ref: Callable[[int, int], tuple[float, float]],
            capacity_by_tp: dict[int, int]) -> dict:
    """The run's figures; `attains`: whether it meets the SLO target overall, in every class (the
    smallest TP degree that holds the request) and with nothing rejected (gyges.bench.slo.attains)."""
    ok = [o for o in res.outcomes if o.ttft_s is not None]
    met, outcomes = 0, []
    for o in res.outcomes:
        t0, p0 = ref(o.prompt_len, o.output_len)
        hit = meets_slo(o.prompt_len, o.ttft_s, o.tpot_s, slo, Baseline(Line(t0), Line(p0)))
        met += hit
        outcomes.append((class_of(o.prompt_len + o.output_len, capacity_by_tp), hit))
    classes = per_class(outcomes)
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None
    ttft, tpot = [o.ttft_s for o in ok], [o.tpot_s for o in ok if o.tpot_s is not None]
    span = max((o.finish_s for o in res.outcomes if o.finish_s), default=0.0) - min(o.arrival_s for o in res.outcomes)
    rejected = len(res.outcomes) - len(ok)
    return {"attainment": met / len(res.outcomes), "attains": attains(met / len(res.outcomes), classes, rejected, ATTAINMENT),
            "class_attainment": {f"tp{c}" if c else "none": m / n for c, (m, n) in sorted(classes.items(), key=lambda x: x[0] or 99)},
            "throughput_tok_s": sum(o.output_len for o in ok) / span if span else 0.0,
            "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99), "tpot_p50_s": pct(tpot, 50),
            "tpot_p99_s": pct(tpot, 99), "transformations": res.transformations,
            "rejected": rejected, "wall_s": res.wall_s, "gave_up": res.gave_up}


def fmt(key: str, value) -> str:
    if isinstance(value, dict):
        return f"{key}=" + ",".join(f"{k}:{v:.2f}" for k, v in value.items())
    return f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
