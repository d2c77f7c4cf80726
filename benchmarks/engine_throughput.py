"""Decode throughput of Gyges on one TP1 worker against HF transformers and vLLM CPU, same weights,
and the layout tax: what laying a cluster out for a larger --max-tp costs one TP1 or TP2 instance.

Every system generates exactly `--new-tokens` tokens (EOS ignored, greedy) for `bs` prompts of
`--prompt-tokens` random ids; throughput is bs * new_tokens / wall time of the whole call. All run
in bf16 on the same two cores, one after another, in one run; ratios are what to compare.

The layout table runs TP1 at max_tp 1, 2, 4 and TP2 at max_tp 2, 4 on SmolLM2 (padded 9/3 heads)
and a random unpadded 16/8-head Llama, on a decode-heavy and a prefill-heavy batch. Each cluster
has max_tp devices, all requests go to the instance on device 0 and the others stay idle, so only
the measured instance runs; configurations interleave round by round (a fresh cluster each time).

    python benchmarks/engine_throughput.py --quick
    python benchmarks/engine_throughput.py --smoke   # every part at a tiny size, no vLLM, JSON under /tmp
    python benchmarks/engine_throughput.py --layout-only --smollm2-meta DIR   # SmolLM2's shapes, random weights
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.peers import vllm_cpu  # noqa: E402
from gyges.cluster.cluster import Cluster  # noqa: E402
from gyges.cluster.config import ClusterConfig, usable_cores  # noqa: E402
from gyges.engine.sequence import SamplingParams  # noqa: E402
from gyges.model.loader import default_model_path  # noqa: E402
from gyges.policy.policy import StaticPolicy  # noqa: E402
from gyges.policy.snapshot import Action, Arrival, Event, Route, Snapshot  # noqa: E402

WORK = Path("/tmp/gyges-bench")
HF_DIR = WORK / "smollm2-hf"
LLAMA_DIR = WORK / "llama-4l-16q8kv-random"
CORES = usable_cores()
# the layout table's configurations: (name, measured instance's TP, max_tp); the cluster has max_tp devices
LAYOUTS = (("tp1_maxtp1", 1, 1), ("tp1_maxtp2", 1, 2), ("tp1_maxtp4", 1, 4), ("tp2_maxtp2", 2, 2), ("tp2_maxtp4", 2, 4))
TAX_RATIOS = (("tp1_maxtp2", "tp1_maxtp1"), ("tp1_maxtp4", "tp1_maxtp1"), ("tp2_maxtp4", "tp2_maxtp2"))


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


def random_model(name: str, tokenizer_dir: Path, config) -> Path:
    """A model of `config` (a transformers config) with random bf16 weights and the tokenizer in
    `tokenizer_dir`, made once under WORK/name. Throughput depends on shapes, not values."""
    path = WORK / name
    if (path / "model.safetensors").exists():
        return path
    import transformers
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    return path


def _llama(**config):
    import transformers
    return transformers.LlamaConfig(**config)


def unpadded_llama(tokenizer_dir: Path) -> Path:
    """A random 4-layer Llama with 16 query / 8 KV heads of 64 (no padding at any TP up to 8) and
    SmolLM2's tokenizer: the layout tax without padded heads."""
    return random_model(LLAMA_DIR.name, tokenizer_dir, _llama(
        vocab_size=49152, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
        num_key_value_heads=8, max_position_embeddings=4096, tie_word_embeddings=False))


def smollm2_sized_unpadded(tokenizer_dir: Path) -> Path:
    """SmolLM2-135M's depth, MLP, vocabulary and tied head with 8 query / 4 KV heads of 64 (hidden 512,
    120M parameters), random weights: it needs no head padding up to TP4, so a transformable TP1
    holds as much KV as a plain one, as for the 8-KV-head models the policies benchmark stands in
    for (SmolLM2's 3 KV heads pad to 4 and cost a TP1 a third more KV bytes a token)."""
    return random_model("smollm2-sized-unpadded-random", tokenizer_dir, _llama(
        vocab_size=49152, hidden_size=512, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=8192, tie_word_embeddings=True, rope_theta=100000.0,
        bos_token_id=1, eos_token_id=2))


def random_weights_like(meta: Path) -> Path:
    """The config and tokenizer in `meta` (a folder without weights) with random weights: SmolLM2's
    shapes where its 94 MB GGUF is not at hand (a device machine gets only the working tree)."""
    import transformers
    return random_model(f"{meta.name}-random", meta, transformers.AutoConfig.from_pretrained(meta))


class OneInstance(StaticPolicy):
    """Routes every request to one instance, so the cluster's other devices stay idle while it is measured."""

    def __init__(self, instance: int = 0):
        super().__init__()
        self.instance = instance

    def decide(self, snap: Snapshot, event: Event) -> list[Action]:
        offered = list(snap.held) + ([event.request] if isinstance(event, Arrival) else [])
        return [Route(r.id, self.instance) for r in offered]


Batch = tuple[list[list[int]], SamplingParams]


def layout_run(model: Path, tp: int, max_tp: int, batches: dict[str, Batch]) -> tuple[dict[str, float], int, dict]:
    """tok/s of each batch (whole span: first submit to last finish) on the TP `tp` instance at device 0
    of a cluster of `max_tp` devices laid out for `max_tp`; decode counts output tokens, prefill prompt
    and output tokens. Also the instance's KV capacity in tokens (what padding costs in memory) and
    the measured worker's info (which path ran)."""
    cfg = ClusterConfig(model=str(model), devices=max_tp, tp=tp, max_tp=max_tp, dtype="bfloat16",
                        device_memory="1536MiB", threads_per_device=max(1, CORES // tp),
                        max_num_seqs=max(len(p) for p, _ in batches.values()))
    out = {}
    with Cluster(cfg, policy=OneInstance(0)) as cluster:
        room = cluster.layout.kv_tokens(tp)
        for kind, (batch, params) in batches.items():
            need = sum(-(-(len(p) + params.max_tokens) // cfg.block_tokens) * cfg.block_tokens for p in batch)
            assert need <= room, f"{kind}: the batch needs {need} KV tokens, TP{tp} holds {room}; raise device_memory"
        cluster.generate(prompts(2, 16, 0), SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
        for kind, (batch, params) in batches.items():
            t = time.perf_counter()
            outs = cluster.generate(batch, params)
            span = time.perf_counter() - t
            assert all(len(o.token_ids) == params.max_tokens for o in outs)
            out[kind] = (len(batch) * params.max_tokens + (kind == "prefill") * sum(map(len, batch))) / span
        return out, room, cluster.worker_info[0]


def layout_tax(models: dict[str, Path], batches: dict[str, Batch], rounds: int, save=None) -> dict:
    """Every configuration of LAYOUTS on every model, `rounds` times, interleaved (each round starts
    one configuration later); medians, min and max, and each tax ratio paired within a round.
    `save(summary)` after every round, so a run cut short still leaves its finished rounds."""
    runs = {m: {k: {c: [] for c, _, _ in LAYOUTS} for k in batches} for m in models}
    capacity: dict[str, dict[str, int]] = {m: {} for m in models}
    paths: set[str] = set()
    for r in range(rounds):
        order = LAYOUTS[r % len(LAYOUTS):] + LAYOUTS[:r % len(LAYOUTS)]
        for m, path in models.items():
            for name, tp, max_tp in order:
                tok_s, capacity[m][name], info = layout_run(path, tp, max_tp, batches)
                paths.add("C kernels" if info.kernels else f"PyTorch ({info.kernels_reason})")
                for k, v in tok_s.items():
                    runs[m][k][name].append(v)
                print(f"  round {r + 1}/{rounds} {m} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in tok_s.items()),
                      flush=True)
        if save:
            save(_summary(runs, capacity, paths, r + 1, batches))
    return _summary(runs, capacity, paths, rounds, batches)


def _summary(runs: dict, capacity: dict, paths: set[str], rounds: int, batches: dict[str, Batch]) -> dict:
    out: dict = {"path": sorted(paths), "rounds": rounds,
                 "batches": {k: {"requests": len(b), "prompt_tokens": len(b[0]), "new_tokens": sp.max_tokens}
                             for k, (b, sp) in batches.items()}}
    for m in runs:
        out[m] = {"kv_capacity_tokens": dict(capacity[m])}
        for k in batches:
            cfgs = runs[m][k]
            entry: dict = {c: statistics.median(v) for c, v in cfgs.items()}
            paired = {f"{a}_over_{b}": [x / y for x, y in zip(cfgs[a], cfgs[b])] for a, b in TAX_RATIOS}
            entry["ratios"] = {n: statistics.median(v) for n, v in paired.items()}
            entry["ratio_spread"] = {n: {"min": min(v), "max": max(v)} for n, v in paired.items()}
            entry["spread"] = {c: {"min": min(v), "max": max(v)} for c, v in cfgs.items()}
            entry["runs"] = {c: list(v) for c, v in cfgs.items()}
            out[m][k] = entry
    return out


def label(config: str) -> str:
    """tp1_maxtp4 -> 1@4 (TP1 laid out for max_tp 4)."""
    return config.replace("tp", "").replace("_max", "@")


def print_layout_tax(tax: dict, models: list[str], kinds: list[str]):
    print(f"\nlayout tax: tok/s, median [min-max] of {tax['rounds']} interleaved rounds; decode counts output "
          f"tokens, prefill prompt + output; path: {', '.join(tax['path'])}")
    print(f"{'model':<22} {'batch':<8} " + " ".join(f"{c:>22}" for c, _, _ in LAYOUTS) +
          " " + " ".join(f"{label(a) + '/' + label(b):>10}" for a, b in TAX_RATIOS))
    for m in models:
        for k in kinds:
            e = tax[m][k]
            cells = [f"{e[c]:.1f} [{e['spread'][c]['min']:.1f}-{e['spread'][c]['max']:.1f}]" for c, _, _ in LAYOUTS]
            print(f"{m:<22} {k:<8} " + " ".join(f"{x:>22}" for x in cells) + " " +
                  " ".join(f"{v:>10.3f}" for v in e["ratios"].values()))
        print(f"{m:<22} {'KV cap.':<8} " + " ".join(f"{tax[m]['kv_capacity_tokens'][c]:>22}" for c, _, _ in LAYOUTS))


def engine_table(model: Path, args) -> dict:
    """Gyges (kernels and PyTorch path), transformers and vLLM CPU at each batch size, and TP2 / 2 x TP1."""
    bs, n, p = args.batch_sizes, args.new_tokens, args.prompt_tokens
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
    return {
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
    }


def print_engine_table(report: dict, bs: list[int]):
    results, r = report["tok_s"], report["ratios"]
    print(f"\noutput tokens/s, {report['new_tokens']} new tokens, prompts of {report['prompt_tokens']}, bf16")
    print(f"{'batch':>6} {'gyges':>8} {'no-kernels':>10} {'transformers':>13} {'vllm':>8} {'g/hf':>6} {'g/vllm':>7} "
          f"{'tp2/tp1':>8} {'2xtp1/tp1':>10}")
    for b in map(str, bs):
        v = results["vllm"][b] if results["vllm"] else None
        print(f"{b:>6} {results['gyges'][b]:8.1f} {results['gyges_pytorch'][b]:10.1f} {results['transformers'][b]:13.1f} "
              f"{v or float('nan'):8.1f} "
              f"{r['gyges_over_transformers'][b]:6.2f} {(r['gyges_over_vllm'] or {}).get(b, float('nan')):7.2f} "
              f"{r['tp2_over_tp1'].get(b, float('nan')):8.2f} {r['2xtp1_over_tp1'].get(b, float('nan')):10.2f}")
    if report.get("vllm_error"):
        print(f"vllm: {report['vllm_error']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch sizes 1, 8, 32 once; no TP2 at batch 1")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--no-vllm", action="store_true", help="skip vLLM CPU (installed into /tmp on first use)")
    ap.add_argument("--layout-rounds", type=int, default=3, help="interleaved rounds of the layout table")
    ap.add_argument("--layout-only", action="store_true", help="only the layout table, not the engine table")
    ap.add_argument("--smollm2-meta", type=Path, default=None,
                    help="a folder with SmolLM2's config and tokenizer but no weights: the layout table then runs "
                         "random weights of its shapes (where the embedded GGUF is not at hand)")
    ap.add_argument("--smoke", action="store_true",
                    help="every part at a tiny size, one layout round, no vLLM; writes under /tmp")
    ap.add_argument("--out", default=None, help="default results/engine_throughput.json (--smoke: under /tmp)")
    args = ap.parse_args()
    # the layout table's batches: decode-heavy (32 x 64 prompt, 64 new) and prefill-heavy (16 x 750, 4 new)
    shapes = {"decode": (32, 64, 64), "prefill": (16, 750, 4)}
    if args.smoke:
        args.batch_sizes, args.new_tokens, args.prompt_tokens, args.no_vllm, args.layout_rounds = [1, 2], 4, 8, True, 1
        shapes = {"decode": (4, 16, 8), "prefill": (2, 96, 2)}
    out_path = Path(args.out or (WORK / "engine_throughput_smoke.json" if args.smoke
                                 else ROOT / "results" / "engine_throughput.json"))
    t0 = time.perf_counter()
    if args.smollm2_meta:
        smollm2, tokenizer_dir = random_weights_like(args.smollm2_meta), args.smollm2_meta
        smollm2_name = "smollm2-135m-random-weights"
    else:
        smollm2 = tokenizer_dir = export_hf_dir()
        smollm2_name = "smollm2-135m"
    print(f"model {smollm2} (SmolLM2-135M-Instruct shapes, bf16); {CORES} cores", flush=True)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": platform.processor() or platform.machine(), "cores": CORES, "dtype": "bfloat16",
              "new_tokens": args.new_tokens, "prompt_tokens": args.prompt_tokens, "batch_sizes": args.batch_sizes}
    if not args.layout_only:
        report.update(engine_table(smollm2, args))
    print("layout table", flush=True)
    tax_models = {smollm2_name: smollm2, "llama-16q8kv-random": unpadded_llama(tokenizer_dir)}
    batches = {k: (prompts(bs_, pt, 7 + i), SamplingParams(max_tokens=nt, temperature=0, ignore_eos=True))
               for i, (k, (bs_, pt, nt)) in enumerate(shapes.items())}
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save(tax: dict):
        report.update(layout_tax=tax, wall_s=time.perf_counter() - t0)
        out_path.write_text(json.dumps(report, indent=2))
    tax = layout_tax(tax_models, batches, args.layout_rounds, save)
    if not args.layout_only:
        print_engine_table(report, args.batch_sizes)
    print_layout_tax(tax, list(tax_models), list(batches))
    print(f"({report['wall_s']:.0f} s) wrote {out_path}")


if __name__ == "__main__":
    main()
