"""Fidelity of the simulator against the real engine: every run of `benchmarks/policies.py` (its
requests, at their send times, with their lengths) replayed in `gyges simulate`'s cluster (the real
controller, scheduler and policy on the fitted CPU profile), on the same devices, device memory,
dtype and engine limits; the two compared on what the simulator issue names: throughput and median
TPOT within 10%, TTFT p50 within 15%, p99 within 25%, transformations within one.

    python benchmarks/sim_fidelity.py [--runs results/policies.json] [--json results/sim_fidelity.json]

Seconds of wall time; prints a table and writes JSON with every run's pair of figures.
"""
import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gyges.bench.traces import TraceRequest  # noqa: E402
from gyges.model.loader import load_config, resolve_model  # noqa: E402
from gyges.policy import make_policy  # noqa: E402
from gyges.policy.profiles import cpu_profile  # noqa: E402
from gyges.sim.run import Setup, simulate  # noqa: E402

TARGETS = {"throughput_tok_s": 0.10, "tpot_p50_s": 0.10, "ttft_p50_s": 0.15, "ttft_p99_s": 0.25}
LAYOUTS = {"static-1,1": (1, 1), "static-2": (2,), "gyges": (1, 1)}


def metrics(reqs: list[dict]) -> dict:
    """The figures compared, from per-request records (seconds from the run's start): total token
    throughput over first send to last finish, TTFT percentiles and median TPOT of completed requests."""
    done = [r for r in reqs if not r["error"] and r["first_token_s"] is not None]
    span = max(r["finish_s"] for r in done) - min(r["send_s"] for r in reqs)
    ttft = [r["first_token_s"] - r["send_s"] for r in done]
    tpot = [(r["finish_s"] - r["first_token_s"]) / (r["output_len"] - 1) for r in done if r["output_len"] > 1]
    return {"throughput_tok_s": sum(r["prompt_len"] + r["output_len"] for r in done) / span,
            "tpot_p50_s": statistics.median(tpot), "ttft_p50_s": float(np.percentile(ttft, 50)),
            "ttft_p99_s": float(np.percentile(ttft, 99)), "completed": len(done)}


def replay(run: dict, setup: Setup, policy: str, min_dwell_s: float) -> tuple[dict, int]:
    trace = sorted((TraceRequest(r["send_s"], r["prompt_len"], r["output_len"]) for r in run["requests"]),
                   key=lambda r: r.arrival_s)
    pol = make_policy("gyges" if policy == "gyges" else "static", setup.cost(),
                      replace(setup.policy_config(), min_dwell_s=min_dwell_s))
    res = simulate(trace, setup, pol, LAYOUTS[policy])
    recs = [{"send_s": o.arrival_s, "first_token_s": o.first_token_s, "finish_s": o.finish_s, "error": o.error,
             "prompt_len": o.prompt_len, "output_len": o.output_len} for o in res.outcomes]
    return metrics(recs), res.transformations


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="results/policies.json")
    ap.add_argument("--json", default="results/sim_fidelity.json")
    ap.add_argument("--min-dwell", type=float, default=2.0, help="the --min-dwell the Gyges server ran with")
    ap.add_argument("--dtype-bytes", type=int, default=4, help="the server's dtype (fp32 on a CPU without AVX512-BF16)")
    ap.add_argument("--block-size", type=int, default=16)
    args = ap.parse_args()
    runs = json.loads(Path(args.runs).read_text())
    model = load_config(resolve_model(None))
    rows, out = [], {"runs": args.runs, "targets": TARGETS, "min_dwell_s": args.min_dwell, "traces": {}}
    for trace_name, t in runs.items():
        hw = replace(cpu_profile(), memory_bytes=t["device_memory_bytes"])
        setup = Setup(model, hw, gpus=t["devices"], host_devices=t["devices"], max_tp=t["devices"],
                      block_tokens=args.block_size, max_num_seqs=64, max_batched_tokens=512, dtype_bytes=args.dtype_bytes)
        layout = setup.layout()
        caps = {str(tp): layout.kv_tokens(tp) for tp in (1, 2)}
        out["traces"][trace_name] = {"kv_tokens_real": t["kv_tokens"], "kv_tokens_sim": caps, "runs": []}
        for policy in (p for p in t if p in LAYOUTS):
            for run in t[policy]["rates"]:
                if run.get("gave_up") or not run.get("requests"):
                    continue
                real = metrics(run["requests"]) | {"transformations": run["transformations"]}
                sim, moves = replay(run, setup, policy, args.min_dwell)
                sim["transformations"] = moves
                err = {k: sim[k] / real[k] - 1 for k in TARGETS}
                ok = all(abs(err[k]) <= tol for k, tol in TARGETS.items()) and abs(moves - real["transformations"]) <= 1
                out["traces"][trace_name]["runs"].append({"policy": policy, "rate": run["rate"], "real": real,
                                                          "sim": sim, "error": err, "within_targets": ok})
                rows.append(f"{trace_name[:8]:<9}{policy:<11}{run['rate']:>6.2f}"
                            + "".join(f"{100 * err[k]:>+8.0f}%" for k in TARGETS)
                            + f"{real['transformations']:>5}/{moves:<3}{'yes' if ok else 'no':>4}")
    print(f"{'trace':<9}{'policy':<11}{'rate':>6}{'tput':>9}{'TPOT50':>9}{'TTFT50':>9}{'TTFT99':>9}  moves  ok")
    print("\n".join(rows))
    errs = {k: [abs(r["error"][k]) for tr in out["traces"].values() for r in tr["runs"]] for k in TARGETS}
    out["median_abs_error"] = {k: statistics.median(v) for k, v in errs.items() if v}
    print("median |error|: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in out["median_abs_error"].items()))
    for name, tr in out["traces"].items():
        print(f"{name}: KV tokens real {tr['kv_tokens_real']}, simulated {tr['kv_tokens_sim']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
