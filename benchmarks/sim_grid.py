"""Gyges against every static layout and every modelled peer in the simulator, on a grid of settings:
{Llama-3.1-8B, Qwen2.5-32B, Llama-3.1-70B} x {H100, A100} x {azure-code, azure-conversation,
Mooncake conversation} (the first 300 s of each, 8 GPUs), plus the two scenarios where traffic changes
(`shift`, `bursts`) on 8 x H100 with Qwen2.5-32B. Each policy at its highest rate within the SLO
(ttft:5x tpot:5x, 90% overall and in every class, nothing rejected), and the bounds.

    python benchmarks/sim_grid.py                       # the whole grid, both cores
    python benchmarks/sim_grid.py --cells qwen2.5-32b/h100/shift --policies gyges static-tp2

Writes results/sim_grid.json ({"cells": [{"model", "gpu", "trace", "policies": {NAME: {...}},
"best_static", "gyges_over_best_static", "bound"}]}) and results/sim_grid.png (Gyges over the best
static layout, per cell)."""
import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gyges.bench.slo import parse_slo  # noqa: E402
from gyges.sim.compare import Setting, bound_of  # noqa: E402
from gyges.sim.profiles import gpu, model  # noqa: E402
from gyges.sim.run import Setup  # noqa: E402
from gyges.sim.searches import search_many  # noqa: E402

MODELS = ("llama-3.1-8b", "qwen2.5-32b", "llama-3.1-70b")
GPUS = ("h100", "a100")
TRACES = ("azure-code", "azure-conversation", "mooncake-conversation")
SCENARIOS = ("shift", "bursts")
DURATION_S = 300.0
SLO = ["ttft:5x", "tpot:5x"]


def cells() -> list[str]:
    return ([f"{m}/{g}/{t}" for m in MODELS for g in GPUS for t in TRACES]
            + [f"qwen2.5-32b/h100/{s}" for s in SCENARIOS])


def setting(cell: str) -> Setting:
    m, g, workload = cell.split("/")
    setup = Setup(model(m), gpu(g), gpus=8)
    if workload in SCENARIOS:
        return Setting(setup, parse_slo(SLO), scenario=workload)
    return Setting(setup, parse_slo(SLO), trace=workload, duration=DURATION_S)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=None, help="MODEL/GPU/TRACE-or-SCENARIO (default: all)")
    ap.add_argument("--policies", nargs="+", default=None, help="only these (default: every one of each cell)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "sim_grid.json"))
    ap.add_argument("--merge", action="store_true", help="keep the other cells already in --out (run some cells again)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    chosen = args.cells or cells()
    settings = {c: setting(c) for c in chosen}
    names = {c: [n for n in s.policies() if not args.policies or n in args.policies] for c, s in settings.items()}
    total, k = sum(map(len, names.values())), 0

    def done(cell: str, name: str, out: dict, took: float) -> None:
        nonlocal k
        k += 1
        rate = out["max_rate_at_slo"]
        print(f"[{k}/{total} {time.perf_counter() - t0:6.0f} s] {cell:<42} {name:<28} "
              + (f"{rate:.3g} req/s ({took:.0f} s)" if rate is not None
                 else f"skipped: {out['skipped']}" if "skipped" in out else f"FAILED: {out['error']}"), flush=True)

    results, _ = search_many(settings, names, args.workers, on_done=done)
    forced = {c: [f] for c in chosen if (f := _forced_uniform(settings[c], results[c]))
              and results[c][f]["max_rate_at_slo"] is None}  # the paper's baseline is searched even when it cannot win
    if forced:
        total += sum(map(len, forced.values()))
        again, _ = search_many({c: settings[c] for c in forced}, forced, args.workers, on_done=done)
        for c, found in again.items():
            results[c].update(found)
    grid = []
    for cell in chosen:
        m, g, w = cell.split("/")
        s = settings[cell]
        pols = results[cell]
        bound = bound_of(s.setup, s.requests, pols, s.phases())
        statics = {n: r["max_rate_at_slo"] for n, r in pols.items() if n.startswith("static") and r.get("rejected") == 0}
        best = max(statics, key=statics.get, default=None)
        forced = _forced_uniform(s, pols)
        gy = pols.get("gyges", {}).get("max_rate_at_slo")
        grid.append({"model": m, "gpu": g, "trace": w, "policies": pols, "best_static": best,
                     "gyges_over_best_static": gy / statics[best] if gy is not None and best and statics[best] else None,
                     "forced_uniform": forced, "gyges_over_forced_uniform":
                         gy / pols[forced]["max_rate_at_slo"] if forced and gy and pols[forced]["max_rate_at_slo"] else None,
                     "bound": bound})
    if args.merge and Path(args.out).exists():
        kept = [c for c in json.loads(Path(args.out).read_text())["cells"]
                if f"{c['model']}/{c['gpu']}/{c['trace']}" not in chosen]
        order = {c: i for i, c in enumerate(cells())}
        grid = sorted(kept + grid, key=lambda c: order.get(f"{c['model']}/{c['gpu']}/{c['trace']}", len(order)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                          "wall_s": time.perf_counter() - t0, "slo": SLO, "cells": grid}, indent=1))
    print(table(grid))
    plot(grid, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


def _forced_uniform(s: Setting, pols: dict) -> str | None:
    """The uniform layout the trace's longest request forces (the paper's baseline): the smallest TP
    degree whose instances hold it, all instances that degree."""
    caps = s.setup.kv_capacities()
    longest = max(r.input_len + r.output_len for r in s.requests)
    t = next((t for t in sorted(caps) if caps[t] >= longest), None)
    name = f"static-tp{t}"
    return name if t is not None and name in pols else None


def table(grid: list[dict]) -> str:
    rows = [f"{'cell':<42} {'gyges':>7} {'best static':>24} {'ratio':>6} {'vs forced':>9} {'peers ahead':>12}"]
    for c in grid:
        pols = c["policies"]
        gy = pols.get("gyges", {}).get("max_rate_at_slo") or 0.0
        best = c["best_static"]
        ahead = [n for n in ("llumnix", "kunserve", "flying-serving", "loongserve")
                 if (pols.get(n, {}).get("max_rate_at_slo") or 0.0) > gy]
        ratio = c["gyges_over_best_static"]
        forced = c["gyges_over_forced_uniform"]
        rows.append(f"{c['model'] + '/' + c['gpu'] + '/' + c['trace']:<42} {gy:7.3g} "
                    f"{(best or '-') + ' ' + (format(pols[best]['max_rate_at_slo'], '.3g') if best else ''):>24} "
                    f"{ratio if ratio is not None else float('nan'):6.2f} {forced if forced else float('nan'):9.2f} "
                    f"{','.join(ahead) or '-':>12}")
    return "\n".join(rows)


def plot(grid: list[dict], path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{c['model']}\n{c['gpu']} {c['trace']}" for c in grid]
    ratios = [c["gyges_over_best_static"] or 0.0 for c in grid]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(grid)), 4))
    ax.bar(range(len(grid)), ratios, color=["tab:green" if r >= 0.97 else "tab:red" for r in ratios])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(0.97, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(grid)), labels, rotation=90, fontsize=6)
    ax.set_ylabel("Gyges / best static layout (max rate at SLO)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
