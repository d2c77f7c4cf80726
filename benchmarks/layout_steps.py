"""The layout tax in one process: a TP1 model shard's forward step laid out for max_tp 1, 2 and 4.

No workers, no scheduler, no other process: the arena, the shard and one `LlamaShard.forward` per
step, so what differs between the layouts is the shard pieces alone (the cluster benchmark,
`engine_throughput.py --layout-only`, adds processes and the controller, and moves by 20-30% between
rounds on a shared machine). Decode steps of 1, 2 and 8 requests at a 128-token context and a
prefill of 256 tokens; the layouts interleave round by round, each figure is the median step of its
round, and the table gives the median and range over rounds of max_tp 1's step time over each
layout's (1.0: no tax). Writes results/layout_steps.json.

    python benchmarks/layout_steps.py                          # SmolLM2-sized unpadded stand-in
    python benchmarks/layout_steps.py --model DIR --dtype bfloat16
"""
import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.engine_throughput import export_hf_dir, smollm2_sized_unpadded  # noqa: E402
from gyges.kernels.build import default_cpu_dtype  # noqa: E402
from gyges.memory.arena import Arena  # noqa: E402
from gyges.memory.layout import device_layout, head_groups  # noqa: E402
from gyges.layers.attention import AttentionMeta, PrefillSeq  # noqa: E402
from gyges.layers.llama import ForwardBatch, LlamaShard  # noqa: E402
from gyges.model.loader import LazyWeights, load_config  # noqa: E402

BLOCK = 16
CONTEXT = 128
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def tp1_shard(model: Path, max_tp: int, dtype: torch.dtype):
    """A TP1 shard laid out for `max_tp` (PyTorch path: the C kernels stay off), and its layout."""
    config = load_config(model)
    layout = device_layout(config, max_tp, BLOCK, dtype.itemsize, 1 << 30)
    arena = Arena(layout, dtype, torch.device("cpu"))
    arena.load(LazyWeights(model, config, dtype), head_groups(max_tp, 1, 0))
    shard = LlamaShard(arena, kernels=False)
    shard.bind(1, 0, None)
    return layout, shard


def decode_batch(layout, requests: int) -> ForwardBatch:
    """`requests` sequences decoding their CONTEXT-th token, each on its own pages."""
    m, blocks = layout.max_tp, -(-CONTEXT // BLOCK)
    tables = torch.tensor(layout.free_pages(1, 0)[:requests * m * blocks]).view(requests, m, blocks)
    pos = torch.full((requests,), CONTEXT - 1)
    meta = AttentionMeta(tables[:, :, -1], pos % BLOCK, torch.arange(requests), tables,
                         torch.full((requests,), CONTEXT), [], BLOCK)
    return ForwardBatch(torch.randint(3, 1000, (requests,)), pos, meta, torch.arange(requests))


def prefill_batch(layout, tokens: int) -> ForwardBatch:
    m, blocks = layout.max_tp, -(-tokens // BLOCK)
    table = torch.tensor(layout.free_pages(1, 0)[:m * blocks]).view(m, blocks)
    pos = torch.arange(tokens)
    meta = AttentionMeta(table[:, pos // BLOCK].t().contiguous(), pos % BLOCK, torch.arange(0),
                         torch.zeros(0, m, 1, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                         [PrefillSeq(0, tokens, tokens, table)], BLOCK)
    return ForwardBatch(torch.randint(3, 1000, (tokens,)), pos, meta, torch.tensor([tokens - 1]))


def median_step(shard, batch: ForwardBatch, steps: int) -> float:
    """Median seconds of `steps` forward passes after two warm-up passes."""
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        shard.forward(batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF directory (default: the SmolLM2-sized unpadded stand-in)")
    ap.add_argument("--dtype", default=default_cpu_dtype(), choices=sorted(DTYPES))
    ap.add_argument("--max-tp", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (one device's share of the cores)")
    ap.add_argument("--out", default=str(ROOT / "results" / "layout_steps.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else smollm2_sized_unpadded(export_hf_dir())
    dtype = DTYPES[args.dtype]
    shards = {t: tp1_shard(model, t, dtype) for t in args.max_tp}
    cases = {f"decode {n}": (lambda lay, n=n: decode_batch(lay, n), 12) for n in (1, 2, 8)}
    cases["prefill 256"] = (lambda lay: prefill_batch(lay, 256), 5)
    steps: dict[str, dict[int, list[float]]] = {c: {t: [] for t in args.max_tp} for c in cases}
    for r in range(args.rounds):
        for name, (make, n) in cases.items():
            for t, (layout, shard) in shards.items():
                steps[name][t].append(median_step(shard, make(layout), n))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    base = min(args.max_tp)
    rows = {}
    print(f"\nTP1 step time laid out for max_tp {base} over laid out for max_tp t ({model.name}, {args.dtype}, "
          f"{args.threads} thread(s), {args.rounds} rounds: median [min, max])")
    print(f"{'batch':<13}" + "".join(f"{f'max_tp {t}':>22}" for t in args.max_tp))
    for name, by_tp in steps.items():
        ratios = {t: [b / x for b, x in zip(by_tp[base], by_tp[t])] for t in args.max_tp}
        rows[name] = {str(t): {"step_s": by_tp[t], "ratio_median": statistics.median(ratios[t]),
                               "ratio_min": min(ratios[t]), "ratio_max": max(ratios[t])} for t in args.max_tp}
        print(f"{name:<13}" + "".join(f"{statistics.median(ratios[t]):>8.3f} [{min(ratios[t]):.2f}, {max(ratios[t]):.2f}]"
                                      f"{'':>1}" for t in args.max_tp))
    out = {"model": model.name, "dtype": args.dtype, "threads": args.threads, "rounds": args.rounds,
           "context": CONTEXT, "cpu": platform.processor() or platform.machine(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cases": rows}
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
