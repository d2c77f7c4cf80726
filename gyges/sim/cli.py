"""`gyges simulate`: a trace or a scenario on simulated GPUs under each policy; with --compare, the
highest rate each policy sustains within the SLO (gyges/sim/compare.py)."""
import argparse
import json
import os

from gyges.bench.slo import parse_slo
from gyges.bench.traces import write_trace
from gyges.sim import scenarios
from gyges.sim.compare import ATTAINMENT, Setting, bound_of, fmt, run_once
from gyges.sim.profiles import GPUS, MODELS, gpu, model
from gyges.sim.run import Setup
from gyges.sim.searches import search_many


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
    p.add_argument("--workers", type=int, default=None, help="with --compare: processes searching at once "
                   "(default: every core)")
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


def main(args) -> int:
    if args.fit:
        from gyges.sim.profiling import fit_command
        return fit_command(args)
    if not args.trace and not args.scenario:
        raise ValueError("--trace or --scenario is required (or --fit)")
    setup = Setup(model(args.model), gpu(args.gpu), gpus=args.gpus, max_tp=min(8, args.gpus), stretch=args.stretch,
                  block_tokens=args.block_tokens, target_tpot_s=args.target_tpot_ms / 1e3)
    setting = Setting(setup, parse_slo(args.slo), args.trace, args.scenario, args.duration)
    if args.write_trace:
        write_trace(setting.workload(args.rate), args.write_trace)
        print(f"wrote {args.write_trace}")
        return 0
    pols = setting.policies()
    names = args.policy.split(",") if args.policy else (list(pols) if args.compare else ["gyges"])
    if any(n not in pols for n in names):
        raise ValueError(f"unknown policy in {args.policy!r}; choose from {', '.join(pols)}")
    show = lambda _key, name, figures, _took: print(f"{name:<28} " + " ".join(fmt(k, v) for k, v in figures.items()),
                                                    flush=True)
    out, shown = {}, {}  # shown: each policy's run at its reported rate, for --plot
    if args.compare:
        workers = min(args.workers or os.cpu_count() or 1, len(names))
        found, runs = search_many({"": setting}, {"": names}, workers, keep_runs=bool(args.plot), on_done=show)
        out, shown = found[""], {name: run for (_, name), run in runs.items()}
    else:
        for name in names:
            out[name], shown[name] = run_once(setting, name, args.rate, progress=True)
            show("", name, out[name], 0.0)
    extra = {"bound": bound_of(setup, setting.requests, out, setting.phases())} if args.compare else {}
    if args.plot:
        from gyges.sim.plots import write_plots
        print("plots:", " ".join(str(f) for f in write_plots(shown, args.plot)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"policies": out, "slo": setting.slo, "trace": args.trace, "scenario": args.scenario,
                       "gpus": args.gpus, "gpu": setup.hw.name, "model": args.model, "attainment_target": ATTAINMENT,
                       **extra}, f, indent=1)
    return 0
