"""`gyges simulate`: a trace on simulated GPUs under each policy; with --compare, the highest rate
each policy sustains within the SLO (arrivals rescaled to each rate)."""
import argparse
import functools
import json
import math
from collections.abc import Callable

import numpy as np

from gyges.bench.slo import Baseline, Line, meets_slo, parse_slo
from gyges.bench.traces import load_trace
from gyges.bench.workload import scale_trace, spread_ties, time_scale_for_rate
from gyges.policy import make_policy
from gyges.sim import layouts
from gyges.sim.bound import rate_bound
from gyges.sim.peers import peers
from gyges.sim.profiles import GPUS, MODELS, gpu, model
from gyges.sim.run import GiveUp, Setup, SimResult, simulate, unloaded
from gyges.sim.sweep import max_rate

ATTAINMENT = 0.9  # the share of requests that must meet the SLO at a sustained rate


def add_parser(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a trace on a GPU cluster (cost model, virtual clock)")
    p.add_argument("--trace", help="a shipped trace name or a Mooncake JSONL / Azure CSV file")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    p.add_argument("--model", default="qwen2.5-32b", choices=sorted(MODELS))
    p.add_argument("--policy", default="gyges", help="gyges, a static layout such as static-tp2, static-4+2+1+1, or a peer: "
                   "llumnix, kunserve, flying-serving, loongserve")
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
    """Name -> (policy, per-host layout, setup): Gyges from all-TP1, every static candidate, the peers."""
    cost, config = setup.cost(), setup.policy_config()
    out = {"gyges": (make_policy("gyges", cost, config), (1,) * setup.host, setup)}
    for name, sizes in layouts.candidates(setup.host, setup.max_tp).items():
        if cost.kv_capacity_tokens(min(sizes)) > 0:  # every instance holds its weights
            out[name] = (make_policy("static", cost, config), sizes, setup)
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


def bound_of(setup: Setup, trace, results: dict[str, dict]) -> dict:
    """The rate no layout can exceed on this trace (`rate_bound`), printed beside the best static
    layout that served every request: the most any policy could gain over it."""
    b = rate_bound(setup.cost(), setup.kv_capacities(), [(r.input_len, r.output_len) for r in trace], setup.gpus,
                   setup.max_num_seqs, setup.max_batched_tokens)
    statics = {n: r["max_rate_at_slo"] for n, r in results.items() if n.startswith("static") and r.get("rejected") == 0}
    best = max(statics, key=statics.get, default=None)
    out = {"per_device_tok_s": b.per_device_tok_s, "best_tp": b.best_tp, "max_rate": b.max_rate,
           "best_static": best, "max_over_best_static": b.max_rate / statics[best] if best and statics[best] else None}
    per = ", ".join(f"TP{t} {v:.0f}" for t, v in b.per_device_tok_s.items())
    print(f"bound (cost model, full utilization, no SLO): tokens/s per device on the requests TP1 holds: {per}; "
          f"no layout serves more than {b.max_rate:.3g} req/s"
          + (f", {out['max_over_best_static']:.2f}x {best} at the SLO" if out["max_over_best_static"] else ""), flush=True)
    return out


def summary(res: SimResult, slo: dict[str, float], ref: Callable[[int, int], tuple[float, float]]) -> dict:
    ok = [o for o in res.outcomes if o.ttft_s is not None]
    met = 0
    for o in res.outcomes:
        t0, p0 = ref(o.prompt_len, o.output_len)
        met += meets_slo(o.prompt_len, o.ttft_s, o.tpot_s, slo, Baseline(Line(t0), Line(p0)))
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None
    ttft, tpot = [o.ttft_s for o in ok], [o.tpot_s for o in ok if o.tpot_s is not None]
    span = max((o.finish_s for o in res.outcomes if o.finish_s), default=0.0) - min(o.arrival_s for o in res.outcomes)
    return {"attainment": met / len(res.outcomes), "throughput_tok_s": sum(o.output_len for o in ok) / span if span else 0.0,
            "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99), "tpot_p50_s": pct(tpot, 50),
            "tpot_p99_s": pct(tpot, 99), "transformations": res.transformations,
            "rejected": len(res.outcomes) - len(ok), "wall_s": res.wall_s, "gave_up": res.gave_up}


def main(args) -> int:
    if args.fit:
        from gyges.sim.profiling import fit_command
        return fit_command(args)
    if not args.trace:
        raise ValueError("--trace is required (or --fit)")
    setup = Setup(model(args.model), gpu(args.gpu), gpus=args.gpus, max_tp=min(8, args.gpus), stretch=args.stretch,
                  block_tokens=args.block_tokens, target_tpot_s=args.target_tpot_ms / 1e3)
    slo, trace = parse_slo(args.slo), load_trace(args.trace)
    if args.duration is not None:
        trace = [r for r in trace if r.arrival_s - trace[0].arrival_s < args.duration]
    trace = spread_ties(trace)
    pols = policies(setup, max(r.input_len + r.output_len for r in trace))
    names = list(pols) if args.compare else [args.policy]
    if any(n not in pols for n in names):
        raise ValueError(f"unknown policy {args.policy!r}; choose from {', '.join(pols)}")

    ref = unloaded_of(setup)
    probe = give_up(len(trace), slo, ref) if args.compare else None

    def run(name: str, rate: float | None) -> tuple[dict, SimResult]:
        reqs = trace if rate is None else scale_trace(trace, time_scale_for_rate(trace, rate)).requests
        pol, sizes, on = pols[name]
        res = simulate(reqs, on, pol, sizes, progress=True, give_up=probe)
        return summary(res, slo, ref), res

    out, shown = {}, {}  # shown: each policy's run at its reported rate, for --plot
    native = (len(trace) - 1) / (trace[-1].arrival_s - trace[0].arrival_s)
    for name in names:
        if args.compare:
            best = {}

            def attains(rate: float) -> bool:
                s, res = run(name, rate)
                if s["attainment"] >= ATTAINMENT and rate >= best.get("rate", 0.0):
                    best.update(s, rate=rate)
                    shown[name] = res
                return s["attainment"] >= ATTAINMENT

            rate = max_rate(attains, native)
            out[name] = {"max_rate_at_slo": rate, **{k: v for k, v in best.items() if k != "rate"}}
        else:
            out[name], shown[name] = run(name, args.rate)
        print(f"{name:<22} " + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in out[name].items()), flush=True)
    extra = {}
    if args.compare:
        extra["bound"] = bound_of(setup, trace, out)
    if args.plot:
        from gyges.sim.plots import write_plots
        print("plots:", " ".join(str(f) for f in write_plots(shown, args.plot)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"policies": out, "slo": slo, "trace": args.trace, "gpus": args.gpus, "gpu": setup.hw.name,
                       "model": args.model, "attainment_target": ATTAINMENT, **extra}, f, indent=1)
    return 0
