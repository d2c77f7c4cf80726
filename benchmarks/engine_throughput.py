"""Decode throughput of Gyges on one TP1 worker against HF transformers and vLLM CPU, same weights.

Every system generates exactly `--new-tokens` tokens (EOS ignored, greedy) for `bs` prompts of
`--prompt-tokens` random ids; throughput is bs * new_tokens / wall time of the whole call. All run
in bf16 on the same two cores, one after another, in one run; ratios are what to compare.

    python benchmarks/engine_throughput.py --quick
"""
import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peers import vllm_cpu  # noqa: E402
from gyges.cluster.cluster import Cluster  # noqa: E402
from gyges.cluster.config import ClusterConfig  # noqa: E402
from gyges.engine.sequence import SamplingParams  # noqa: E402
from gyges.model.loader import default_model_path  # noqa: E402

HF_DIR = Path("/tmp/gyges-bench/smollm2-hf")
CORES = os.cpu_count() or 1


def export_hf_dir() -> Path:
    """The embedded GGUF, dequantized once into an HF directory every system can load."""
    if (HF_DIR / "model.safetensors").exists():
        return HF_DIR
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(HF_DIR)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(HF_DIR)
    cfg = json.loads((HF_DIR / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (HF_DIR / "config.json").write_text(json.dumps(cfg, indent=2))
    return HF_DIR


def best_time(run, repeats: int = 2) -> float:
    """Best of `repeats` timed runs: this shared machine's noise only ever slows a run down.
    vLLM's peer script takes the best of three the same way."""
    return min(run() for _ in range(repeats))


def prompts(bs: int, n: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 40000, (bs, n), generator=g).tolist()


def gyges_tok_s(model: Path, batch_sizes, new_tokens, prompt_tokens, devices=1, tp=1,
                cpu_kernels=True) -> dict[str, float]:
    cfg = ClusterConfig(model=str(model), devices=devices, tp=tp, max_tp=tp, dtype="bfloat16",
                        device_memory="1536MiB", max_num_seqs=max(batch_sizes) * devices, cpu_kernels=cpu_kernels)
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    out = {}
    with Cluster(cfg) as cluster:
        cluster.generate(prompts(2, prompt_tokens, 0), SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
        for bs in batch_sizes:
            batch = prompts(bs * devices // tp, prompt_tokens, bs)

            def run() -> float:
                t = time.perf_counter()
                outs = cluster.generate(batch, params)
                assert all(len(o.token_ids) == new_tokens for o in outs)
                return time.perf_counter() - t
            out[str(bs)] = len(batch) * new_tokens / best_time(run)
    return out


def transformers_tok_s(model: Path, batch_sizes, new_tokens, prompt_tokens) -> dict[str, float]:
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(CORES)
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).eval()
    out = {}
    with torch.inference_mode():
        m.generate(torch.tensor(prompts(2, prompt_tokens, 0)), max_new_tokens=4, do_sample=False)
        for bs in batch_sizes:
            ids = torch.tensor(prompts(bs, prompt_tokens, bs))

            def run() -> float:
                t = time.perf_counter()
                gen = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
                assert gen.shape[1] - prompt_tokens == new_tokens
                return time.perf_counter() - t
            out[str(bs)] = bs * new_tokens / best_time(run)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch sizes 1, 8, 32 once; no TP2 at batch 1")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--no-vllm", action="store_true", help="skip vLLM CPU (installed into /tmp on first use)")
    ap.add_argument("--out", default=str(ROOT / "results" / "engine_throughput.json"))
    args = ap.parse_args()
    bs, n, p = args.batch_sizes, args.new_tokens, args.prompt_tokens
    model = export_hf_dir()
    t0 = time.perf_counter()
    print(f"model {model} (SmolLM2-135M-Instruct, GGUF Q4_1 dequantized to bf16); {CORES} cores", flush=True)
    results = {"gyges": gyges_tok_s(model, bs, n, p),
               "gyges_pytorch": gyges_tok_s(model, bs, n, p, cpu_kernels=False)}
    print("gyges done", flush=True)
    results["transformers"] = transformers_tok_s(model, bs, n, p)
    print("transformers done", flush=True)
    if args.no_vllm:
        vllm = {"tok_s": None, "error": "skipped (--no-vllm)"}
    else:
        vllm = vllm_cpu.measure(str(model), bs, n, p, dtype="bfloat16", eager=True)
    results["vllm"] = vllm["tok_s"]
    tp_bs = [b for b in bs if b >= 8] if args.quick else bs
    results["gyges_tp2"] = gyges_tok_s(model, tp_bs, n, p, devices=2, tp=2)
    results["gyges_2xtp1"] = gyges_tok_s(model, tp_bs, n, p, devices=2, tp=1)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
        "cores": CORES, "dtype": "bfloat16", "new_tokens": n, "prompt_tokens": p, "batch_sizes": bs,
        "kernels": "gyges: C kernels (packed bf16 matmuls, paged decode attention); gyges_pytorch: cpu_kernels=False",
        "threads": {"gyges": f"1 worker x {CORES} torch threads; TP2: 2 workers x {max(1, CORES // 2)}",
                    "transformers": f"{CORES} torch threads", "vllm": vllm.get("threads")},
        "tok_s": results, "vllm_error": vllm.get("error"), "vllm_version": vllm.get("version"),
        "ratios": {
            "gyges_over_transformers": {b: results["gyges"][b] / results["transformers"][b] for b in results["gyges"]},
            "kernels_over_pytorch": {b: results["gyges"][b] / results["gyges_pytorch"][b] for b in results["gyges"]},
            "gyges_over_vllm": {b: results["gyges"][b] / results["vllm"][b] for b in results["gyges"]} if results["vllm"] else None,
            "tp2_over_tp1": {b: results["gyges_tp2"][b] / results["gyges"][b] for b in results["gyges_tp2"]},
            "2xtp1_over_tp1": {b: results["gyges_2xtp1"][b] / results["gyges"][b] for b in results["gyges_2xtp1"]},
        },
        "wall_s": time.perf_counter() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\noutput tokens/s, {n} new tokens, prompts of {p}, bf16 ({report['wall_s']:.0f} s)")
    print(f"{'batch':>6} {'gyges':>8} {'no-kernels':>10} {'transformers':>13} {'vllm':>8} {'g/hf':>6} {'g/vllm':>7} "
          f"{'tp2/tp1':>8} {'2xtp1/tp1':>10}")
    r = report["ratios"]
    for b in map(str, bs):
        v = results["vllm"][b] if results["vllm"] else None
        print(f"{b:>6} {results['gyges'][b]:8.1f} {results['gyges_pytorch'][b]:10.1f} {results['transformers'][b]:13.1f} "
              f"{v or float('nan'):8.1f} "
              f"{r['gyges_over_transformers'][b]:6.2f} {(r['gyges_over_vllm'] or {}).get(b, float('nan')):7.2f} "
              f"{r['tp2_over_tp1'].get(b, float('nan')):8.2f} {r['2xtp1_over_tp1'].get(b, float('nan')):10.2f}")
    if vllm.get("error"):
        print(f"vllm: {vllm['error']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
