"""Merge 4xTP1 -> TP4 and split back while requests decode, against the machine's transfer limits,
a vLLM-style token-major KV move, and drain-and-restart.

For each model: requests holding a few thousand KV tokens run on four TP1 instances; after a few
decode steps the cluster merges to TP4, decodes, then splits back to 4xTP1 and decodes. Measured
in the same run, for the same bytes: gloo send/recv and all_to_all_single between the same pairs,
each destination reading its bytes from the peers' memory as one run per peer (the transport the
moves use on this host, gyges/transform/peer_reads.py), the same units moved in token-major layout
(gather, move, scatter), and a restart (reload weights from disk at the new degree, recompute
every running request's prefill).

Every move, limit and baseline is a wall span: first start to last finish over the devices, on
the host's one monotonic clock. The stall is reported over the step just before and as overhead
over the new configuration's own step; medians with p10 and p90 over `--cycles` cycles.

    python benchmarks/transform.py --quick
    python benchmarks/transform.py --kv-tokens 300 --cycles 2 --models smollm2-135m --no-restart --out /tmp/smoke.json  # smoke
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

from benchmarks import transfer_worker as transfer  # noqa: E402
from gyges.cluster.cluster import Cluster  # noqa: E402
from gyges.cluster.config import ClusterConfig  # noqa: E402
from gyges.engine.sequence import SamplingParams  # noqa: E402
from gyges.kernels.build import default_cpu_dtype  # noqa: E402
from gyges.model.loader import default_model_path  # noqa: E402

WORK = Path("/tmp/gyges-bench")
CYCLES = 9  # merge/split cycles per model, synchronous, then as many with pre-copy (medians, p10, p90)
MODELS = ("smollm2-135m", "llama-250m-random")


def large_llama() -> Path:
    """A random Llama of about 240M parameters (bf16, 16 query / 8 KV heads) with SmolLM2's tokenizer, made once."""
    path = WORK / "llama-250m-random"
    if (path / "model.safetensors").exists():
        return path
    import transformers
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                                   num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=4096,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)
    gguf = default_model_path()
    transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(path)
    return path


class Recorder:
    """Steps the cluster and keeps the time of every token of every request."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.times: dict[int, list[float]] = {}
        self.step_s: list[float] = []

    def step(self, n: int = 1):
        for _ in range(n):
            t = time.perf_counter()
            self.cluster.step()
            now = time.perf_counter()
            self.step_s.append(now - t)
            for inst in self.cluster.instances:
                for seq in inst.scheduler.requests:
                    got = self.times.setdefault(seq.id, [])
                    got += [now] * (len(seq.output_ids) - len(got))

    def stall(self, t0: float, t1: float) -> float:
        """Longest gap between two consecutive tokens of a request, over gaps that overlap [t0, t1]."""
        return max(b - a for ts in self.times.values() for a, b in zip(ts, ts[1:]) if b >= t0 and a <= t1)


def span(stamps) -> float:
    """Wall time of work done by several processes: first start to last finish, on the host's
    one monotonic clock (`time.monotonic` is CLOCK_MONOTONIC, shared by every process)."""
    return max(end for _, end in stamps) - min(start for start, _ in stamps)


def on_workers(cluster, msg) -> list:
    for w in cluster.workers:
        w.send(msg)
    return [w.recv() for w in cluster.workers]


def limits(cluster, moves, cold: bool = True) -> dict[str, float | None]:
    """One sample of each transport moving the same bytes between the same pairs, one contiguous
    buffer per pair, as a wall span over the devices; peer reads None where the workers cannot
    read each other."""
    out = {"send_recv_s": span(on_workers(cluster, transfer.SendRecvLimit(moves, cold))),
           "all_to_all_s": span(on_workers(cluster, transfer.AllToAllLimit(moves, [0, 1, 2, 3], cold)))}
    reads = on_workers(cluster, transfer.PeerReadLimit(moves, cold))
    return {**out, "peer_read_s": None if None in reads else span(reads)}


def best(times: dict[str, float | None]) -> float:
    return min(t for t in times.values() if t is not None)


def spread(values: list[float]) -> dict[str, float]:
    """Median, 10th and 90th percentiles."""
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return {"median": statistics.median(values), "p10": q[0], "p90": q[8]}


def stalls(stall: float, step_before: float, new_step: float) -> dict[str, float]:
    """The stall over the step just before, and as overhead over the new configuration's own step."""
    return {"stall_over_step_before": stall / step_before,
            "stall_overhead_over_new_step": (stall - new_step) / new_step}


def transform(cluster, kind: str, precopy: bool):
    return cluster.merge([0, 1, 2, 3], precopy=precopy) if kind == "merge" else cluster.split(0, 4, precopy=precopy)


def measure_precopy(cluster, rec: Recorder, kind: str) -> dict:
    """Stall seen by running requests when the KV of full blocks is pre-copied while they decode."""
    rec.step(3)
    decode_step = statistics.median(rec.step_s[-3:])
    t0 = time.perf_counter()
    transform(cluster, kind, precopy=True)
    steps = 0
    while cluster.transition is not None:
        rec.step(1)
        steps += 1
    report = cluster.reports[-1]
    rec.step(4)
    after = statistics.median(rec.step_s[-3:])
    stall = rec.stall(t0, t0 + report.total_s)
    stats = report.worker_stats.values()
    return {"post_decode_step_s": after, "stall_over_slower_step": stall / max(decode_step, after),
            "total_s": report.total_s, "precopy_s": report.precopy_s, "precopy_bytes": report.precopy_bytes,
            "steps_during": steps, "switch_kv_units": report.kv_units_moved, "switch_weight_bytes": report.weight_bytes,
            "switch_s": span([(s.kv_start, s.weight_end) for s in stats]),
            "stall_s": stall, "decode_step_s": decode_step, "stall_over_decode_step": stall / decode_step,
            **stalls(stall, decode_step, after), "post_step_s": rec.step_s[-4]}


def measure(cluster, rec: Recorder, kind: str, restart: bool = True) -> dict:
    """A synchronous transformation: its moves against the limits (one sample each) and the
    baselines, every one timed as a wall span over the devices (first start to last finish)."""
    rec.step(2)
    decode_step = rec.step_s[-1]
    t0 = time.perf_counter()
    report = transform(cluster, kind, precopy=False)
    rec.step(4)
    post_step, new_step = rec.step_s[-4], statistics.median(rec.step_s[-3:])
    stall = rec.stall(t0, t0 + report.total_s)
    moves = list(enumerate(report.plan.kv_moves))
    page = cluster.layout.page_bytes
    cross = sum(mv.count for _, mv in moves if mv.src != mv.dst) * page
    stats = report.worker_stats.values()
    kv_move_s = max(s.kv_s for s in stats)  # the slowest device alone, as before: not the wall time
    kv_span = span([(s.kv_start, s.kv_end) for s in stats])
    # one sample of each limit per transformation, like the move itself: a best-of-n limit against
    # single moves would compare this noisy machine's best moments with its typical ones
    cold = limits(cluster, moves)
    warm_s = best(limits(cluster, moves, cold=False))
    memcpy_s = min(transfer.memcpy_limit(max(cross // 4, 1 << 20)) for _ in range(3))
    token_major_s = statistics.median([span(on_workers(cluster, transfer.TokenMajorMove(moves))) for _ in range(3)])
    limit_s = best(cold)
    out = {
        "total_s": report.total_s, "stall_s": stall, "decode_step_s": decode_step, "post_step_s": post_step,
        "new_step_s": new_step, **stalls(stall, decode_step, new_step),
        "kv_units_moved": report.kv_units_moved, "kv_messages": len(moves), "kv_bytes": report.kv_bytes,
        "kv_cross_device_bytes": cross, "kv_move_s": kv_move_s, "kv_move_span_s": kv_span,
        "kv_gbps": cross / kv_span / 1e9,
        "transport": "peer reads" if all(w.peer_reads for w in cluster.worker_info) else "gloo send/recv",
        **cold, "limit_s": limit_s, "limit_span_s": limit_s, "limit_gbps": cross / limit_s / 1e9,
        "memcpy_gbps": max(cross // 4, 1 << 20) / memcpy_s / 1e9, "fraction_of_limit": limit_s / kv_span,
        "warm_limit_s": warm_s, "fraction_of_warm_limit": warm_s / kv_span,
        "token_major_kv_move_s": token_major_s, "token_major_over_header_centric": token_major_s / kv_span,
        "weight_bytes_moved": report.weight_bytes,
        "peak_extra_bytes": max(s.peak_extra_bytes or 0 for s in stats),
        "instances_after": [i.devices for i in cluster.instances],
    }
    if restart:
        out.update(restart_baseline(cluster, rec))
        out["restart_over_total"] = out["restart_s"] / report.total_s
    return out


def restart_baseline(cluster, rec: Recorder) -> dict:
    """Drain and restart at the current degree: reload every shard from disk, recompute all prefill."""
    ranks = {d: (inst.tp, inst.devices.index(d)) for inst in cluster.instances for d in inst.devices}
    for d, w in enumerate(cluster.workers):
        w.send(transfer.ReloadFromDisk(*ranks[d]))
    reload_s = span([w.recv() for w in cluster.workers])
    running = [s for inst in cluster.instances for s in inst.scheduler.running]
    done_before = {s.id: len(s.output_ids) for s in running}
    for inst in cluster.instances:
        inst.scheduler.requeue_all()
    t = time.perf_counter()
    while any(len(s.output_ids) == done_before[s.id] for s in running if not s.finished):
        rec.step(1)
    recompute_s = time.perf_counter() - t
    return {"restart_s": reload_s + recompute_s, "restart_reload_s": reload_s, "restart_recompute_s": recompute_s}


SPREAD = ("kv_move_span_s", "limit_span_s", "fraction_of_limit", "stall_over_step_before", "stall_overhead_over_new_step")


def run_model(name: str, model: Path | None, memory: str, prompt_lens: list[int], cycles: int,
              restart: bool = True, dtype: str = "bfloat16") -> dict:
    cfg = ClusterConfig(model=str(model) if model else None, devices=4, tp=1, max_tp=4, dtype=dtype,
                        device_memory=memory, max_batched_tokens=512)
    t = time.perf_counter()
    with Cluster(cfg, worker_class=transfer.BenchWorker) as cluster:  # the limits and baselines are its commands
        load_s = time.perf_counter() - t
        g = torch.Generator().manual_seed(0)
        for n in prompt_lens:
            ids = torch.randint(100, 30000, (n,), generator=g).tolist()
            cluster.add_request(ids, SamplingParams(max_tokens=400, temperature=0, ignore_eos=True))
        rec = Recorder(cluster)
        while any(s.num_computed < len(s.prompt_ids) for i in cluster.instances
                  for s in i.scheduler.requests):
            rec.step(1)
        rec.step(3)
        kv_tokens = sum(s.num_tokens for i in cluster.instances for s in i.scheduler.running)
        out = {"load_s": load_s, "kv_tokens_in_flight": kv_tokens, "page_bytes": cluster.layout.page_bytes,
               "padding": vars(cluster.layout.padding), "cycles": cycles}
        out["merge"] = measure(cluster, rec, "merge", restart)
        out["split"] = measure(cluster, rec, "split", restart)
        for _ in range(cycles - 1):  # repeat the cycle: transfer timings on this shared machine are noisy
            for kind in ("merge", "split"):
                rep = measure(cluster, rec, kind, restart=False)
                keep = ("kv_move_s", "kv_move_span_s", "limit_s", "limit_span_s", "fraction_of_limit", "send_recv_s",
                        "all_to_all_s", "peer_read_s", "warm_limit_s", "fraction_of_warm_limit",
                        "stall_over_step_before", "stall_overhead_over_new_step")
                out[kind].setdefault("reps", []).append({k: rep[k] for k in keep})
        for kind in ("merge", "split"):
            runs = [out[kind]] + out[kind].get("reps", [])
            for key in SPREAD:
                for stat, v in spread([c[key] for c in runs]).items():
                    out[kind][f"{key}_{stat}"] = v
            out[kind]["kv_move_s_median"] = statistics.median(c["kv_move_s"] for c in runs)
            out[kind]["limit_s_median"] = out[kind]["limit_span_s_median"]
            out[kind]["fraction_of_warm_limit_median"] = statistics.median(c["fraction_of_warm_limit"] for c in runs)
        samples = {"merge": [], "split": []}
        for _ in range(cycles):
            for kind in ("merge", "split"):
                samples[kind].append(measure_precopy(cluster, rec, kind))
        for kind, runs in samples.items():
            pre = {k: statistics.median(c[k] for c in runs) for k in runs[0]}
            for key in ("stall_over_step_before", "stall_overhead_over_new_step"):
                pre.update({f"{key}_{stat}": v for stat, v in spread([c[key] for c in runs]).items()})
            out[kind]["precopy"] = {**pre, "cycles": runs}
    print(f"{name}: done", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the default run: 6,000 KV tokens per model, 9 cycles")
    ap.add_argument("--kv-tokens", type=int, default=6000, help="prompt tokens in flight, over six requests (30%% of them down to 7%%)")
    ap.add_argument("--cycles", type=int, default=CYCLES, help="merge/split cycles, synchronous and with pre-copy")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--no-restart", action="store_true", help="skip the drain-and-restart baseline (smoke runs)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default=default_cpu_dtype(),
                    help="default: bf16 where the CPU has AVX512-BF16 (the C kernels), else fp32")
    ap.add_argument("--out", default=str(ROOT / "results" / "transform.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    lens = [args.kv_tokens * w // 60 for w in (18, 14, 10, 8, 6, 4)]
    scale = 2 if args.dtype == "float32" else 1  # fp32 weights and KV take twice the bytes
    memory = {"smollm2-135m": f"{512 * scale}MiB", "llama-250m-random": f"{768 * scale}MiB"}
    results = {name: run_model(name, large_llama() if name == "llama-250m-random" else None, memory[name], lens,
                               args.cycles, not args.no_restart, args.dtype) for name in args.models}
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kv_tokens": args.kv_tokens,
              "machine": platform.processor() or platform.machine(), "devices": 4, "dtype": args.dtype,
              "wall_s": time.perf_counter() - t0, "models": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    cols = ["total_s", "stall_s", "decode_step_s", "new_step_s", "kv_move_span_s", "limit_span_s",
            "fraction_of_limit_median", "stall_over_step_before_median", "stall_overhead_over_new_step_median",
            "token_major_over_header_centric", "peak_extra_bytes"] + ([] if args.no_restart else ["restart_over_total"])
    print(f"\n{'model':>18} {'dir':>5} " + " ".join(f"{c[:12]:>12}" for c in cols))
    for name, r in results.items():
        for kind in ("merge", "split"):
            m = r[kind]
            print(f"{name:>18} {kind:>5} " + " ".join(
                f"{m[c]:12.4g}" if isinstance(m[c], float) else f"{str(m[c]):>12}" for c in cols))
    pcols = ["total_s", "precopy_s", "switch_s", "stall_s", "decode_step_s", "post_decode_step_s",
             "stall_over_step_before_median", "stall_overhead_over_new_step_median"]
    print(f"\nwith pre-copy (medians of {args.cycles} cycles)\n{'model':>18} {'dir':>5} " + " ".join(f"{c[:12]:>12}" for c in pcols))
    for name, r in results.items():
        for kind in ("merge", "split"):
            m = r[kind]["precopy"]
            print(f"{name:>18} {kind:>5} " + " ".join(f"{m[c]:12.4g}" for c in pcols))
    print(f"({report['wall_s']:.0f} s) wrote {args.out}")


if __name__ == "__main__":
    main()
