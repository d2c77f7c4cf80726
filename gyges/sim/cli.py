"""`gyges simulate`: a trace on simulated GPUs under each policy; with --compare, the highest rate
each policy sustains within the SLO (arrivals rescaled to each rate)."""
import argparse
import functools
import json
import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from gyges.bench.slo import Baseline, Line, attains, class_of, meets_slo, parse_slo, per_class
from gyges.bench.traces import TraceRequest, load_trace, write_trace
from gyges.bench.workload import scale_trace, spread_ties, time_scale_for_rate
from gyges.policy import make_policy
from gyges.sim import layouts, scenarios
from gyges.sim.bound import layout_bounds, rate_bound
from gyges.sim.peers import peers
from gyges.sim.profiles import GPUS, MODELS, gpu, model
from gyges.sim.run import GiveUp, Setup, SimResult, simulate, unloaded
from gyges.sim.sweep import max_rate

ATTAINMENT = 0.9  # the share of requests that must meet the SLO at a sustained rate


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a trace on a GPU cluster (cost model, virtual clock)")
    p.add_argument("--trace", help="a shipped trace name or a Mooncake JSONL / Azure CSV file")
    p.add_argument("--scenario", choices=sorted(scenarios.SCENARIOS), default=None,
                   help="traffic that changes (gyges/sim/scenarios.py) instead of a trace; --rate sets its mean rate")
    p.add_argument("--write-trace", default=None, help="write the workload (at --rate) as a Mooncake JSONL file for "
                   "`gyges bench --trace FILE`, and stop")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    p.add_argument("--model", default="qwen2.5-32b", choices=sorted(MODELS))
    p.add_argument("--policy", default=None, help="gyges (the default), a static layout such as static-tp2 or "
                   "static-4+2+1+1 (with -freeness: routing by room per request), or a peer: llumnix, kunserve, "
                   "flying-serving, loongserve, gyges-reactive; with --compare, a comma-separated list (default: all)")
    p.add_argument("--slo", nargs="+", default=["ttft:5x", "tpot:5x"])
    p.add_argument("--duration", type=float, default=None, help="keep only the trace's first this many seconds")
    p.add_argument("--block-size", dest="block_tokens", type=int, default=16,
                   help="KV block tokens (vLLM's 16; larger blocks plan transformations faster, coarser KV accounting)")
    p.add_argument("--rate", type=float, default=None, help="rescale arrivals to this many requests/s")
    p.add_argument("--compare", action="store_true", help="every policy, each at its highest rate within the SLO")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", nargs="?", const="results", default=None,
                   help="write TTFT CDFs, throughput over time and layout timelines to this folder (default results/)")
    p.add_argument("--target-tpot-ms", type=float, default=0.0, help="gyges serve's flag: a step carrying decodes "
                   "takes the prompt tokens that keep it within this (0: off)")
    p.add_argument("--no-stretch", dest="stretch", action="store_false", help="step every decode (slow, exact)")
    p.add_argument("--fit", action="store_true", help="fit the CPU profile to our engine's measured steps "
                   "(a profiling sweep of a few minutes, or --fit-from) and write it")
    p.add_argument("--fit-from", default=None, help="with --fit: the samples of an earlier --fit JSON instead of a sweep")
    p.add_argument("--fit-out", default=None, help="with --fit: where to write the profile (default: gyges/data/cpu_profile.json)")
    p.set_defaults(func=main)


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


def _fmt(key: str, value) -> str:
    if isinstance(value, dict):
        return f"{key}=" + ",".join(f"{k}:{v:.2f}" for k, v in value.items())
    return f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"


def main(args) -> int:
    if args.fit:
        from gyges.sim.profiling import fit_command
        return fit_command(args)
    if not args.trace and not args.scenario:
        raise ValueError("--trace or --scenario is required (or --fit)")
    setup = Setup(model(args.model), gpu(args.gpu), gpus=args.gpus, max_tp=min(8, args.gpus), stretch=args.stretch,
                  block_tokens=args.block_tokens, target_tpot_s=args.target_tpot_ms / 1e3)
    slo = parse_slo(args.slo)
    if args.scenario:
        base = scenarios.base_rate(args.scenario, setup)

        def workload(rate: float | None) -> list[TraceRequest]:
            return scenarios.generate(args.scenario, setup, (rate or base) / base)
        trace, native = workload(None), base / 2
    else:
        trace = load_trace(args.trace)
        if args.duration is not None:
            trace = [r for r in trace if r.arrival_s - trace[0].arrival_s < args.duration]
        trace = spread_ties(trace)
        native = (len(trace) - 1) / (trace[-1].arrival_s - trace[0].arrival_s)

        def workload(rate: float | None) -> list[TraceRequest]:
            return trace if rate is None else scale_trace(trace, time_scale_for_rate(trace, rate)).requests
    if args.write_trace:
        write_trace(workload(args.rate), args.write_trace)
        print(f"wrote {args.write_trace}")
        return 0
    pols = policies(setup, max(r.input_len + r.output_len for r in trace))
    names = args.policy.split(",") if args.policy else (list(pols) if args.compare else ["gyges"])
    if any(n not in pols for n in names):
        raise ValueError(f"unknown policy in {args.policy!r}; choose from {', '.join(pols)}")

    ref, caps = unloaded_of(setup), setup.kv_capacities()

    def run(name: str, rate: float | None) -> tuple[dict, SimResult]:
        reqs = workload(rate)
        pol, sizes, on = pols[name]
        res = simulate(reqs, on, pol, sizes, progress=True, give_up=give_up(len(reqs), slo, ref) if args.compare else None)
        return summary(res, slo, ref, caps), res

    out, shown = {}, {}  # shown: each policy's run at its reported rate, for --plot
    for name in names:
        if args.compare:
            best = {}

            def meets(rate: float) -> bool:
                s, res = run(name, rate)
                if s["attains"] and rate >= best.get("rate", 0.0):
                    best.update(s, rate=rate)
                    shown[name] = res
                return s["attains"]

            rate = max_rate(meets, native)
            out[name] = {"max_rate_at_slo": rate, **{k: v for k, v in best.items() if k != "rate"}}
        else:
            out[name], shown[name] = run(name, args.rate)
        print(f"{name:<28} " + " ".join(_fmt(k, v) for k, v in out[name].items()), flush=True)
    extra = {}
    if args.compare:
        extra["bound"] = bound_of(setup, trace, out, scenarios.phases_of(args.scenario, trace) if args.scenario else None)
    if args.plot:
        from gyges.sim.plots import write_plots
        print("plots:", " ".join(str(f) for f in write_plots(shown, args.plot)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"policies": out, "slo": slo, "trace": args.trace, "scenario": args.scenario, "gpus": args.gpus,
                       "gpu": setup.hw.name,
                       "model": args.model, "attainment_target": ATTAINMENT, **extra}, f, indent=1)
    return 0
