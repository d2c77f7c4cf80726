"""What the HTTP server costs: the same requests through `Cluster.generate` (offline) and as
concurrent streams to `gyges serve` (an httpx asyncio client on the same cores), one run, same
devices and settings. Target: the server delivers >= 90% of the offline throughput.

Every request is `--prompt-tokens` random token ids and generates exactly `--new-tokens` tokens
(greedy, EOS ignored); throughput = all generated tokens / wall time from the first request to the
last token. Writes results/serve_overhead.json.

    python benchmarks/serve_overhead.py                      # 32 requests on the embedded model
    python benchmarks/serve_overhead.py --model DIR --requests 4 --new-tokens 8   # a smoke run
"""
import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gyges.cluster.cluster import Cluster  # noqa: E402
from gyges.cluster.config import ClusterConfig  # noqa: E402
from gyges.engine.sequence import SamplingParams  # noqa: E402
from tests.server.conftest import start_server, stop_server  # noqa: E402


def offline(cluster: Cluster, prompts: list[list[int]], new_tokens: int) -> float:
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    t0 = time.perf_counter()
    outs = cluster.generate(prompts, params)
    wall = time.perf_counter() - t0
    assert all(len(o.token_ids) == new_tokens for o in outs), "a request did not generate every token"
    return wall


async def _stream(client: httpx.AsyncClient, prompt: list[int], new_tokens: int) -> int:
    body = {"prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage")
                tokens = usage["completion_tokens"] if usage else tokens
    return tokens


async def _all_streams(url: str, prompts: list[list[int]], new_tokens: int) -> float:
    limits = httpx.Limits(max_connections=len(prompts))
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(_stream(client, p, new_tokens) for p in prompts))
        wall = time.perf_counter() - t0
    assert all(c == new_tokens for c in counts), f"a stream did not generate every token: {counts}"
    return wall


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--device-memory", default="1GiB")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="interleaved offline/server runs; medians reported")
    p.add_argument("--out", default=str(ROOT / "results" / "serve_overhead.json"))
    args = p.parse_args()
    cfg = ClusterConfig(model=args.model, devices=args.devices, device_memory=args.device_memory, dtype=args.dtype,
                        max_num_seqs=args.requests)
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 400) for _ in range(args.prompt_tokens)] for _ in range(args.requests)]
    total = args.requests * args.new_tokens
    warm = prompts[:2]
    offline_s, server_s = [], []
    server = start_server(args.model, "--devices", str(args.devices), "--device-memory", args.device_memory,
                          "--dtype", args.dtype, "--max-num-seqs", str(args.requests), "--policy", "static")
    try:
        with Cluster(cfg) as cluster:  # both up, used in turn: an idle one sleeps
            offline(cluster, warm, 2)
            asyncio.run(_all_streams(server.url, warm, 2))
            for _ in range(args.repeats):
                offline_s.append(offline(cluster, prompts, args.new_tokens))
                server_s.append(asyncio.run(_all_streams(server.url, prompts, args.new_tokens)))
    finally:
        stop_server(server)
    ratios = sorted(o / s for o, s in zip(offline_s, server_s))
    print(f"{args.requests} requests x {args.new_tokens} tokens, {args.devices} device(s), {args.dtype}, "
          f"{os.cpu_count()} cores shared by the client and the server; {args.repeats} interleaved repeats")
    print(f"{'path':<28}{'median tok/s':>14}{'min':>9}{'max':>9}")
    for name, walls in (("offline (Cluster.generate)", offline_s), ("server (HTTP streams)", server_s)):
        tps = sorted(total / w for w in walls)
        print(f"{name:<28}{statistics.median(tps):>14.1f}{tps[0]:>9.1f}{tps[-1]:>9.1f}")
    ratio = statistics.median(ratios)
    print(f"server / offline throughput: median {ratio:.1%} (per repeat {ratios[0]:.1%} to {ratios[-1]:.1%}; "
          f"target >= 90%)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(), "host": platform.node(),
                               "cores": os.cpu_count(), "loadavg": os.getloadavg(), "args": vars(args),
                               "offline_s": offline_s, "server_s": server_s,
                               "offline_tok_s": total / statistics.median(offline_s),
                               "server_tok_s": total / statistics.median(server_s), "ratio": ratio,
                               "ratios": ratios}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
