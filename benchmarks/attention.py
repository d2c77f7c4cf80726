"""Decode attention over header-centric pages: the C kernel (bf16, reads the pages in place), the
written-out PyTorch path and torch SDPA (both on gathered pages).

SmolLM2 shapes at TP1: 9 query / 3 KV heads, head_dim 64; the table reports ms per layer call
and the gather's share of the PyTorch paths.

    python benchmarks/attention.py
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gyges.kernels.paged_decode import decode_attention, usable  # noqa: E402
from gyges.layers.attention import AttentionMeta, _decode, _gather  # noqa: E402


def timed(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def case(dtype: torch.dtype, batch: int, ctx: int, reps: int, block: int = 16) -> dict:
    hq, hkv, d = 9, 3, 64
    blocks = -(-ctx // block)
    pages = batch * blocks + 1
    cache = torch.randn(pages, 2, hkv, block, d, dtype=dtype)
    tables = torch.arange(1, pages).view(batch, 1, blocks)
    lens = torch.full((batch,), ctx)
    meta = AttentionMeta(torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                         torch.arange(batch), tables, lens, [], block)
    q = torch.randn(batch, hq, d, dtype=dtype)
    scale = d ** -0.5
    visible = ~meta.decode_hidden  # both kernels get the step's mask ready-made

    def sdpa():
        k, v = _gather(cache, tables, 0), _gather(cache, tables, 1)
        return F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=visible, scale=scale, enable_gqa=True)

    def kernel():
        return decode_attention(cache, q, tables, lens, None, scale)

    err = (_decode(cache, meta, q, scale).float() - sdpa().squeeze(2).float()).abs().max().item()
    has_kernel = usable(cache, hq)
    return {"dtype": str(dtype).replace("torch.", ""), "batch": batch, "ctx": ctx,
            "kernel_ms": timed(kernel, reps) if has_kernel else None,
            "kernel_max_abs_diff": (kernel().float() - sdpa().squeeze(2).float()).abs().max().item() if has_kernel else None,
            "gyges_ms": timed(lambda: _decode(cache, meta, q, scale), reps), "sdpa_ms": timed(sdpa, reps),
            "gather_ms": timed(lambda: (_gather(cache, tables, 0), _gather(cache, tables, 1)), reps),
            "max_abs_diff": err}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "results" / "attention.json"))
    args = ap.parse_args()
    rows = [case(dt, b, c, args.reps) for dt in (torch.bfloat16, torch.float32) for b, c in ((1, 128), (32, 128), (32, 1024))]
    print(f"{'dtype':>9} {'batch':>5} {'ctx':>5} {'kernel ms':>9} {'pytorch ms':>10} {'sdpa ms':>8} {'gather ms':>9} "
          f"{'sdpa/pytorch':>12} {'sdpa/kernel':>11}")
    for r in rows:
        k = r["kernel_ms"]
        print(f"{r['dtype']:>9} {r['batch']:>5} {r['ctx']:>5} {k or float('nan'):9.3f} {r['gyges_ms']:10.3f} "
              f"{r['sdpa_ms']:8.3f} {r['gather_ms']:9.3f} {r['sdpa_ms'] / r['gyges_ms']:12.2f} "
              f"{r['sdpa_ms'] / k if k else float('nan'):11.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
