"""Gyges against every static layout on the real engine: `gyges serve` under each policy on the same
devices and the same trace slice; for each, the highest request rate at which at least 90% of the
requests meet a length-scaled SLO (`ttft:5x tpot:5x` of unloaded runs in this same benchmark).

Arrivals: requests that share a timestamp are spread over the trace's resolution (spread_ties: Mooncake's
first 60 requests come in 6 bursts of 10-16 at whole 3-second steps, which no rate rescaling separates).
Scaling: lengths shrink by --length-scale, chosen so the slice's mean request is --mean-tokens
long, and each device gets the memory for weights plus 46K x length-scale tokens of KV at TP1: the
share of the trace one 80 GB H100 holds for Qwen2.5-32B. Then the requests that need a merge on
the real deployment need one here. The ceiling, measured in the same run: throughput of plain
k x TP1 (--max-tp 1) over one TP-k instance on the slice's requests that fit TP1; the bound it
implies for Gyges is 1 / ((1 - w) / ceiling + w), w the share of work in requests that need a merge.

    python benchmarks/policies.py --quick      # 2 devices, both traces
    python benchmarks/policies.py              # 2 and 4 devices
"""
import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.engine_throughput import export_hf_dir, smollm2_sized_unpadded  # noqa: E402
from gyges.bench.metrics import RequestRecord  # noqa: E402
from gyges.bench.runner import BenchConfig, BenchResult, run_benchmark  # noqa: E402
from gyges.bench.slo import Baseline, fit_baseline  # noqa: E402
from gyges.bench.traces import load_trace  # noqa: E402
from gyges.bench.workload import Workload, scale_trace, spread_ties, time_scale_for_rate, with_arrivals  # noqa: E402
from gyges.cluster.config import usable_cores  # noqa: E402
from gyges.kernels.build import default_cpu_dtype  # noqa: E402
from gyges.memory.layout import device_layout, units_per_block  # noqa: E402
from gyges.model.loader import load_config  # noqa: E402

# (80 GB - 65.5 GB of Qwen2.5-32B bf16 weights - activations) / 256 KiB of KV per token (64 layers,
# 8 KV heads of 128): the KV tokens one H100 holds at TP1
REAL_KV_TOKENS = 46_000
UNPADDED = "smollm2-sized-unpadded"
# defaults of the full run and of --quick, which must finish in about 20 minutes on 2 cores
FULL = {"requests": 100, "mean_tokens": 256.0, "baseline_requests": 16, "min_dwell": 10.0}
QUICK = {"requests": 40, "mean_tokens": 64.0, "baseline_requests": 8, "min_dwell": 2.0}
SLO = {"ttft": 5.0, "tpot": 5.0}
ATTAIN = 0.90
TARGET_SHARE = 0.8  # --target-tpot-ms slo: this share of the tightest TPOT limit
RESULTS = ROOT / "results"
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass
class Setup:
    """One trace on one device count: what every server of this comparison shares."""
    trace: str
    devices: int
    workload: Workload          # the scaled slice at the trace's own times
    length_scale: float
    device_memory: int          # bytes per device
    capacity: dict[int, int]    # TP degree -> KV tokens of one instance
    model: Path
    name: str                   # the served model name
    vocab_size: int
    args: argparse.Namespace
    phases: dict[str, float] = field(default_factory=dict)
    plain_tp1_capacity: int = 0  # KV tokens of a TP1 instance laid out for TP1 alone (the ceiling's) at this memory
    target_tpot_ms: float = 0.0  # every sweep server's --target-tpot-ms (set from the unloaded baseline)

    @property
    def threads(self) -> int:
        return self.args.threads_per_device or max(1, usable_cores() // self.devices)

    @property
    def key(self) -> str:
        return f"{self.trace}-{self.devices}dev"

    def degree(self, i: int) -> int:
        """The smallest TP degree whose instance holds request i (its prompt and all its output)."""
        r = self.workload.requests[i]
        return min((t for t, cap in self.capacity.items() if cap >= r.input_len + r.output_len),
                   default=self.devices)


def stop_on_sigterm():
    """SIGTERM unwinds like Ctrl-C, so the servers this benchmark started are stopped too."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def aligned_layouts(devices: int, start: int = 0) -> list[tuple[int, ...]]:
    """Every buddy layout: instance sizes in device order, each a power of two starting at a
    multiple of itself (2 devices: (1, 1), (2,); 4 devices: five)."""
    if start == devices:
        return [()]
    out, s = [], 1
    while start + s <= devices and start % s == 0:
        out += [(s, *rest) for rest in aligned_layouts(devices, start + s)]
        s *= 2
    return out


def scaled(trace: str, devices: int, args, model: Path) -> Setup:
    """The slice scaled to --mean-tokens per request and the device memory whose TP1 instance holds
    REAL_KV_TOKENS x length-scale tokens of KV."""
    reqs = spread_ties(load_trace(trace)[:args.requests])  # as the simulator does: see spread_ties
    ls = args.mean_tokens / float(np.mean([r.input_len + r.output_len for r in reqs]))
    config = load_config(model)
    probe = device_layout(config, devices, args.block_size, DTYPE_BYTES[args.dtype], 0)
    blocks = math.ceil(REAL_KV_TOKENS * ls / args.block_size)
    memory = (probe.min_pages(1) + blocks * units_per_block(devices, 1)) * probe.page_bytes
    layout = device_layout(config, devices, args.block_size, DTYPE_BYTES[args.dtype], memory)
    capacity = {t: layout.kv_tokens(t) for t in (2 ** k for k in range(devices.bit_length())) if t <= devices}
    w = scale_trace(reqs, 1.0, ls, config.max_position_embeddings)
    plain = device_layout(config, 1, args.block_size, DTYPE_BYTES[args.dtype], memory)
    return Setup(trace, devices, w, ls, memory, capacity, model, "model", config.vocab_size, args,
                 plain_tp1_capacity=plain.kv_tokens(1))


# the server

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _post(url: str, body: dict, timeout: float = 600.0) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_idle(url: str, timeout: float = 300.0) -> tuple[dict, float]:
    """Wait until the server has no request and no transformation in progress, so a rate never
    inherits the work of the one before (the requests of a run that gave up are aborted at their
    instance's next step); returns /v1/cluster then and the seconds waited."""
    t0 = time.monotonic()
    while True:
        c = _get(f"{url}/v1/cluster")
        if c["pending"] is None and not c["held"] and not any(i["running"] or i["waiting"] for i in c["instances"]):
            return c, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the server did not become idle in {timeout:.0f} s: {c}")
        time.sleep(0.2)


def split_to_tp1(url: str, c: dict):
    """Split every merged instance of an idle Gyges server (`c`: its /v1/cluster) back into TP1
    instances, the layout it starts in, so every rate of a sweep starts alike (operator endpoint)."""
    for inst in c["instances"]:
        if inst["tp"] > 1:
            _post(f"{url}/v1/cluster/split", {"device": inst["devices"][0], "parts": inst["tp"]})


@contextmanager
def serve(model: Path, flags: list[str], start_timeout: float = 600.0) -> Iterator[str]:
    """`gyges serve MODEL FLAGS` on a free port, up once /health answers; SIGTERM on exit."""
    port, t0 = _free_port(), time.perf_counter()
    log = tempfile.NamedTemporaryFile("w+", prefix="gyges-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "gyges.cli", "serve", str(model), "--port", str(port),
                             "--log-level", "warning", *flags], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gyges serve exited with {proc.returncode} (log {log.name}):\n"
                                   + Path(log.name).read_text()[-3000:])
            if time.perf_counter() - t0 > start_timeout:
                raise RuntimeError(f"gyges serve not healthy after {start_timeout:.0f} s (log {log.name})")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1.0).close()
                break
            except OSError:
                time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@contextmanager
def serve_setup(s: Setup, policy: str, layout: tuple[int, ...] | None = None, max_tp: int | None = None
                ) -> Iterator[str]:
    """A server of this comparison: its devices, memory and threads, under `policy` ("gyges", "static" or
    "static-freeness": a static layout routing by room per request)."""
    t0 = time.perf_counter()
    policy, _, router = policy.partition("-")
    flags = ["--devices", str(s.devices), "--max-tp", str(max_tp or s.devices), "--device-memory",
             str(s.device_memory), "--dtype", s.args.dtype, "--block-size", str(s.args.block_size),
             "--threads-per-device", str(s.threads), "--served-model-name", s.name, "--policy", policy,
             "--router", router or "latency",
             "--max-num-batched-tokens", str(s.args.max_num_batched_tokens),
             "--long-prefill-token-threshold", str(s.args.long_prefill_token_threshold),
             "--target-tpot-ms", f"{s.target_tpot_ms:g}"]
    flags += ["--enable-operator-endpoints", "--min-dwell", str(s.args.min_dwell)] if policy == "gyges" else []
    flags += ["--cost-profile", s.args.cost_profile] if policy == "gyges" and s.args.cost_profile else []
    with serve(s.model, flags + (["--static-layout", ",".join(map(str, layout))] if layout else []),
               s.args.start_timeout) as url:
        s.phases["of which server starts"] = s.phases.get("of which server starts", 0.0) + time.perf_counter() - t0
        yield url


@dataclass
class Run:
    """One benchmark against one server: its result and the layout history during it."""
    result: BenchResult
    start_wall: float
    layout0: list[list[int]]                   # instances' devices when the run began
    transformations: list[dict]                # /v1/cluster records that started during the run


def run(s: Setup, url: str, w: Workload, concurrency: int | None = None, baseline: Baseline | None = None) -> Run:
    before = _get(f"{url}/v1/cluster")
    n = len(w.requests)  # a rate fails once more than 10% have certainly missed: stop there
    cfg = BenchConfig(url, model=s.name, seed=s.args.seed, vocab_size=s.vocab_size, max_concurrency=concurrency,
                      slo=SLO if baseline else {}, slo_baseline=baseline, progress=False,
                      give_up_misses=n - math.ceil(ATTAIN * n) + 1 if baseline else None)
    start = time.time()
    res = run_benchmark(cfg, w)
    while (c := _get(f"{url}/v1/cluster"))["pending"] is not None:  # a transformation may still be finishing
        time.sleep(0.2)
    return Run(res, start, [i["devices"] for i in before["instances"]],
               [t for t in c["transformations"] if t["started"] >= start])


def at_rate(w: Workload, rate: float) -> Workload:
    ts = time_scale_for_rate(w.requests, rate)
    return replace(w, requests=with_arrivals(w.requests, [r.arrival_s * ts for r in w.requests]))


def at_once(w: Workload) -> Workload:
    return replace(w, requests=with_arrivals(w.requests, [0.0] * len(w.requests)))


def subset(w: Workload, idx: list[int]) -> Workload:
    return replace(w, requests=[w.requests[i] for i in idx])


# the measurements

def unloaded(s: Setup, url: str, tp: int) -> list[tuple[int, float, float | None, float]]:
    """(prompt length, TTFT, TPOT, E2EL) of requests whose smallest instance is TP `tp`, sent one at a
    time to `url`, a static all-TP`tp` server (at most --baseline-requests, spread over the slice),
    each as soon as the one before it finished. Requests of one output token have no TPOT, so
    those with more are taken where there are any (TTFT does not depend on the output)."""
    idx = [i for i in range(len(s.workload.requests)) if s.degree(i) == tp]
    idx = [i for i in idx if s.workload.requests[i].output_len > 1] or idx
    idx = sorted({idx[j] for j in np.linspace(0, len(idx) - 1, min(len(idx), s.args.baseline_requests), dtype=int)})
    out = []
    for rec in run(s, url, subset(at_once(s.workload), idx), concurrency=1).result.records:
        if not rec.success:
            raise RuntimeError(f"an unloaded request failed on TP{tp}: {rec.error}")
        out.append((rec.prompt_len, rec.ttft_s, rec.tpot_s if rec.output_tokens > 1 else None, rec.e2el_s))
    return out


def throughput(s: Setup, url: str, w: Workload) -> list[float]:
    """Total token throughput of `w` sent all at once, --repeats times."""
    out = []
    for _ in range(s.args.repeats):
        r = run(s, url, w).result
        if r.metrics.failed:
            why = next(x.error for x in r.records if not x.success)
            raise RuntimeError(f"{r.metrics.failed} requests failed in a throughput run, the first with: {why}")
        out.append(r.metrics.total_token_throughput)
    return out


def summary(r: Run, rate: float) -> dict:
    recs, m = r.result.records, r.result.metrics
    ok = [x for x in recs if x.success]
    ttft = [x.ttft_s for x in ok] or [math.nan]
    tpot = [x.tpot_s for x in ok if x.output_tokens > 1] or [math.nan]
    met = round(r.result.slo_attainment * len(recs))
    rejected = sum(not x.success and x.status in (400, 503) for x in recs)
    # sustained: ATTAIN of all requests and of each class (the smallest TP degree holding it), none failed
    return {"rate": rate, "slo_attainment": met / len(recs), "attains": bool(r.result.attains),
            "slo_by_class": r.result.slo_by_class, "throughput_tok_s": m.total_token_throughput,
            "output_tok_s": m.output_throughput, "goodput_req_s": met / m.duration_s,
            "ttft_p50_s": float(np.median(ttft)), "ttft_p99_s": float(np.percentile(ttft, 99)),
            "tpot_p50_s": float(np.median(tpot)), "tpot_p99_s": float(np.percentile(tpot, 99)),
            "completed": m.completed, "rejected": rejected, "failed": len(recs) - m.completed - rejected,
            "transformations": len(r.transformations), "duration_s": m.duration_s, "gave_up": r.result.gave_up,
            # the layout over the run, so the timeline can be drawn again from the JSON
            "layout_segments": [[t0, t1, list(d), tp] for t0, t1, d, tp in
                                layout_segments(r, max((x.finish_s or 0.0) for x in recs))],
            # each request, so a miss can be traced to its cause (held for a merge, queued, slow decode)
            "requests": [{"prompt_len": x.prompt_len, "output_len": x.output_len, "send_s": x.send_s,
                          "first_token_s": x.first_token_s, "finish_s": x.finish_s, "output_tokens": x.output_tokens,
                          "error": x.error[:200]} for x in recs]}


def next_rate(met: dict[float, bool], start: float, factor: float, max_runs: int) -> float | None:
    """The sweep's next rate given what each rate tried so far did (met the SLO or not), or None when
    it is done: start x factor^k, up while the SLO holds (down while it does not) until the boundary
    is bracketed, then geometric bisection, `max_runs` in all (DistServe's search). The ladder's
    rates are the same for every policy, so they can be compared rate by rate."""
    if start not in met:
        return start
    if len(met) >= max_runs:
        return None
    up, rate = met[start], start
    while rate in met and met[rate] == up and rate > start * factor ** -4:
        rate = rate * factor if up else rate / factor
    if rate not in met:
        return rate
    passed = [r for r, ok in met.items() if ok]
    above = [r for r, ok in met.items() if not ok and r > max(passed, default=0.0)]
    if not passed or not above:
        return None
    mid = math.sqrt(max(passed) * min(above))
    return None if mid in met else mid


def tpot_target_ms(flag: str, baseline: Baseline) -> float:
    """The servers' --target-tpot-ms: a number as given, or `slo`: TARGET_SHARE of the SLO's tightest
    TPOT limit (the shortest prompt's), so a step predicted on target still meets the limit when it
    runs somewhat long."""
    return SLO["tpot"] * baseline.tpot(0) * 1e3 * TARGET_SHARE if flag == "slo" else float(flag)


def implied_bound(ceiling: float, w_merge: float) -> float:
    """Gyges' gain over the merged layout if the share 1 - w_merge of the work runs `ceiling` times
    faster and the rest as fast."""
    return 1.0 / ((1.0 - w_merge) / ceiling + w_merge)


def compare(s: Setup) -> tuple[dict, dict]:
    """Baseline, ceiling and every policy's sweep for one Setup; returns its JSON and the runs to plot."""
    k, runs = s.devices, {}
    # the ceiling's requests fit a TP1 of either layout: the plain one's pages are max_tp times larger,
    # so its KV rounds down further (4 devices: 224 tokens against 240)
    fits = [i for i, r in enumerate(s.workload.requests)
            if s.degree(i) == 1 and r.input_len + r.output_len <= s.plain_tp1_capacity]
    degrees = sorted({s.degree(i) for i in range(len(s.workload.requests))}, reverse=True)
    work = [r.input_len + r.output_len for r in s.workload.requests]
    w_merge = sum(n for i, n in enumerate(work) if s.degree(i) > 1) / sum(work)
    burst = subset(at_once(s.workload), fits)

    def phase(name: str, t0: float):
        s.phases[name] = s.phases.get(name, 0.0) + time.perf_counter() - t0
        print(f"  [{s.key}] {name}: {s.phases[name]:.0f} s", flush=True)

    # every static layout with the latency-aware router and with room-per-request routing (-freeness):
    # a router that lowers the static baselines must not make Gyges look better
    policies = {"gyges": ("gyges", None)} | {"static-" + ",".join(map(str, lay)) + suffix: ("static" + suffix, lay)
                                              for lay in aligned_layouts(k) for suffix in ("", "-freeness")}
    policies = {n: p for n, p in policies.items() if not s.args.policies or n in s.args.policies}
    results: dict[str, dict] = {}
    baseline, samples = None, []

    urls: dict[str, str] = {}

    def attempt(name: str, rate: float) -> dict:
        url = urls[name]
        for other, u in urls.items():  # the servers share the cores: none may still be busy
            c, waited = wait_idle(u)
            if waited > 1.0:
                print(f"    ({other}: waited {waited:.1f} s for it to finish the last rate's work)", flush=True)
            if other == name == "gyges":
                split_to_tp1(url, c)
        r = run(s, url, at_rate(s.workload, rate), baseline=baseline)
        runs[(name, rate)] = r
        out = summary(r, rate) | {"time_scale": time_scale_for_rate(s.workload.requests, rate)}
        print(f"    {name:<14} {rate:7.3f} req/s: SLO {100 * out['slo_attainment']:5.1f}%  "
              f"{out['throughput_tok_s']:7.1f} tok/s  TTFT p50 {out['ttft_p50_s']:.3f} s  "
              f"rejected {out['rejected']}  failed {out['failed']}  transformations {out['transformations']}"
              f"{'  (gave up early)' if out['gave_up'] else ''}",
              flush=True)
        return out

    t0 = time.perf_counter()
    with serve_setup(s, "static", (1,) * k, max_tp=1) as url:
        plain = throughput(s, url, burst)
    with serve_setup(s, "static", (k,)) as url:
        tpk = throughput(s, url, burst)
    with serve_setup(s, "static", (1,) * k) as url:  # Gyges' own TP1 instances: laid out to be merged
        own = throughput(s, url, burst)
    phase("ceiling", t0)
    ceiling = float(np.median(plain) / np.median(tpk))
    bound = implied_bound(ceiling, w_merge)
    # what transformable TP1 instances give at this device memory: the padding that lets heads split
    # over k devices also takes KV pages, which a tight memory feels (SmolLM2: 3 KV heads pad to 4)
    ceiling_own = float(np.median(own) / np.median(tpk))
    bound_own = implied_bound(ceiling_own, w_merge)
    t0 = time.perf_counter()
    for t in degrees:  # each degree's unloaded requests on its own all-TPt static server
        with serve_setup(s, "static", (t,) * (k // t)) as url:
            samples += unloaded(s, url, t)
    if all(tpot is None for _, _, tpot, _ in samples):
        raise ValueError(f"{s.key}: every request of the slice has one output token at length scale "
                         f"{s.length_scale:.4f}, so there is no TPOT to fit; raise --mean-tokens or --requests")
    baseline = fit_baseline(*map(list, list(zip(*samples))[:3]))
    s.target_tpot_ms = tpot_target_ms(s.args.target_tpot_ms, baseline)
    phase("unloaded baseline", t0)
    # every policy's server up at once, so that their sweeps interleave: round by round, each policy
    # runs its next rate, and a slow spell of this shared machine falls on all of them alike
    with ExitStack() as stack:
        t0 = time.perf_counter()
        urls.update({name: stack.enter_context(serve_setup(s, policy, lay)) for name, (policy, lay) in policies.items()})
        # half the rate the devices serve with no batching at all (measured unloaded latencies)
        start = s.args.start_rate or 0.5 * k / float(np.mean([e2el for *_, e2el in samples]))
        tried: dict[str, list[dict]] = {name: [] for name in policies}
        while True:
            met = {n: {r["rate"]: r["attains"] for r in tried[n]} for n in policies}
            todo = {n: next_rate(met[n], start, s.args.factor, s.args.max_runs) for n in policies}
            todo = {n: r for n, r in todo.items() if r is not None}
            if not todo:
                break
            for name, rate in todo.items():
                tried[name].append(attempt(name, rate))
        phase("interleaved sweeps", t0)
    for name in policies:
        rates = sorted(tried[name], key=lambda r: r["rate"])
        good = [r for r in rates if r["attains"]]
        best = max(good, key=lambda r: r["rate"]) if good else min(rates, key=lambda r: r["rate"])
        results[name] = {"max_rate_at_slo": best["rate"] if good else 0.0,
                         **{f: v for f, v in best.items() if f not in ("rate", "requests")}, "rates": rates}
    out = {"devices": k, "requests": len(s.workload.requests), "length_scale": s.length_scale,
           "kv_tokens_tp1_real": REAL_KV_TOKENS, "kv_tokens": {str(t): c for t, c in s.capacity.items()},
           "device_memory_bytes": s.device_memory, "clipped": s.workload.clipped,
           "need_merge": sum(s.degree(i) > 1 for i in range(len(work))), "work_share_need_merge": w_merge,
           "slo": {**{m: f"{x:g}x" for m, x in SLO.items()}, "attainment": ATTAIN,
                   "baseline": baseline.to_json() | {"requests": len(samples)}},
           "ceiling": ceiling, "bound": bound, "ceiling_transformable": ceiling_own, "bound_transformable": bound_own,
           "kv_tokens_plain_tp1": s.plain_tp1_capacity,
           "ceiling_runs_tok_s": {f"plain-{k}xtp1": plain, f"tp{k}": tpk, f"{k}xtp1-transformable": own}, **results}
    return out, runs


# plots

def token_times(rec: RequestRecord) -> list[float]:
    if not rec.success:
        return []
    return [rec.first_token_s, *(rec.first_token_s + np.cumsum(rec.itl_s)).tolist()]


def layout_segments(r: Run, end: float) -> list[tuple[float, float, tuple[int, ...], int | None]]:
    """What each group of devices was from the run's start to `end` (seconds): (start, stop, devices,
    TP degree, or None while it transformed). Instances a transformation leaves out serve on through it."""
    since = {tuple(d): 0.0 for d in r.layout0}
    out = []
    for tr in sorted(r.transformations, key=lambda t: t["started"]):
        t = tr["started"] - r.start_wall
        done = t + tr["duration_s"]
        for inst in map(tuple, tr["from"]):
            out += [(since.pop(inst), t, inst, len(inst)), (t, done, inst, None)]
        since.update({tuple(inst): done for inst in tr["to"]})
    return out + [(t0, end, inst, len(inst)) for inst, t0 in since.items()]


def plot(key: str, out: dict, runs: dict, capacity_tp1: int):
    """TTFT CDFs and throughput over time of every policy at the highest rate all of them ran at
    which Gyges met the SLO (else the lowest they all ran), and Gyges' layout timeline at that rate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in out if n == "gyges" or n.startswith("static")]
    common = sorted(set.intersection(*({r["rate"] for r in out[n]["rates"]} for n in names)))
    if not common:
        return
    ref = out["gyges" if "gyges" in names else names[0]]["max_rate_at_slo"]
    rate = max([r for r in common if r <= ref], default=common[0])
    fig, (cdf, tput) = plt.subplots(1, 2, figsize=(12, 4.2))
    for n in names:
        recs = runs[(n, rate)].result.records
        ttft = sorted(r.ttft_s for r in recs if r.success)
        cdf.step(ttft, np.arange(1, len(ttft) + 1) / len(recs), where="post", label=n)
        times = np.concatenate([token_times(r) for r in recs] or [[]])
        if len(times):
            bins = np.arange(0, times.max() + 1.0, 1.0)
            tput.plot(bins[:-1], np.histogram(times, bins)[0], label=n)
    cdf.set(xscale="log", xlabel="TTFT (s)", ylabel="share of requests (rejected/failed never arrive)",
            title=f"{key}: TTFT at {rate:.2f} req/s")
    tput.set(xlabel="time (s)", ylabel="output tokens / s", title=f"{key}: throughput at {rate:.2f} req/s")
    cdf.legend()
    tput.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"policies-{key}-ttft-throughput.png", dpi=110)
    plt.close(fig)
    if "gyges" not in names:
        return
    g = runs[("gyges", rate)]
    end = max((r.finish_s or 0.0) for r in g.result.records)
    fig, ax = plt.subplots(figsize=(12, 3.2))
    colors = {1: "tab:blue", 2: "tab:orange", 4: "tab:green", 8: "tab:red", None: "grey"}
    for t0, t1, inst, tp in layout_segments(g, end):
        ax.broken_barh([(t0, t1 - t0)], (min(inst) - 0.4, len(inst) - 0.2), color=colors.get(tp, "k"),
                       alpha=0.7 if tp else 0.4)
    devices = out["devices"]
    long = [r for r in g.result.records if r.prompt_len + r.output_len > capacity_tp1]
    for j, r in enumerate(long):
        y = devices - 0.3 + 0.25 * (j % 3)
        ax.plot([r.send_s, r.finish_s or end], [y, y], color="black", lw=2)
    ax.set(xlabel="time (s)", ylabel="device", yticks=range(devices), ylim=(-0.6, devices + 0.6),
           title=f"{key}: Gyges layout at {rate:.2f} req/s (bars: instances, colour by TP "
                 f"1 blue / 2 orange / 4 green; grey: transforming; black: requests longer than TP1 holds)")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(RESULTS / f"policies-{key}-layout.png", dpi=110)
    plt.close(fig)


def table(key: str, out: dict) -> str:
    rows = [f"{key}: ceiling {out['ceiling']:.3f}, w {out['work_share_need_merge']:.3f}, bound {out['bound']:.3f}, "
            f"length scale {out['length_scale']:.4f}, TP1 KV {out['kv_tokens']['1']} tokens "
            f"(plain TP1: {out['kv_tokens_plain_tp1']}); with Gyges' own TP1 instances: ceiling "
            f"{out['ceiling_transformable']:.3f}, bound {out['bound_transformable']:.3f}",
            f"{'policy':<16}{'max rate':>9}{'tok/s':>9}{'goodput':>9}{'TTFT p50':>9}{'TTFT p99':>9}"
            f"{'TPOT p50':>9}{'rej':>5}{'fail':>5}{'trans':>6}{'vs best':>8}"]
    names = [n for n in out if n == "gyges" or n.startswith("static")]
    serving = [out[n]["max_rate_at_slo"] for n in names if n.startswith("static") and not any(  # serves every request
        r["rejected"] or (r["failed"] and not r.get("gave_up")) for r in out[n]["rates"])]
    best = max(serving, default=0.0)
    for n in names:
        p = out[n]
        rows.append(f"{n:<16}{p['max_rate_at_slo']:>9.3f}{p['throughput_tok_s']:>9.1f}{p['goodput_req_s']:>9.3f}"
                    f"{p['ttft_p50_s']:>9.3f}{p['ttft_p99_s']:>9.3f}{p['tpot_p50_s']:>9.4f}{p['rejected']:>5}"
                    f"{p['failed']:>5}{p['transformations']:>6}"
                    f"{p['max_rate_at_slo'] / best if best else math.nan:>8.2f}")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"2 devices, and unless given: {QUICK}")
    ap.add_argument("--devices", type=int, nargs="+", default=None, help="default: 2 (--quick) or 2 4")
    ap.add_argument("--traces", nargs="+", default=["mooncake-conversation", "azure-code"])
    ap.add_argument("--requests", type=int, default=None, help="the slice: the trace's first N requests")
    ap.add_argument("--mean-tokens", type=float, default=None,
                    help="mean prompt + output tokens of a scaled request (sets --length-scale)")
    ap.add_argument("--model", default=None,
                    help=f"HF directory, or {UNPADDED!r} (SmolLM2's size with 8/4 heads, random weights: no head "
                         "padding, like the 8-KV-head models it stands in for); default: the embedded SmolLM2")
    ap.add_argument("--dtype", default=default_cpu_dtype(), choices=sorted(DTYPE_BYTES),
                    help="default: bfloat16 on CPUs with AVX512-BF16, else float32")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--threads-per-device", type=int, default=None,
                    help="default: the cores over the devices, at least 1")
    ap.add_argument("--baseline-requests", type=int, default=None, help="unloaded requests per TP degree")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side of the ceiling")
    ap.add_argument("--start-rate", type=float, default=None, help="first rate of each sweep (default: from "
                    "the unloaded baseline, half the devices' rate without batching)")
    ap.add_argument("--factor", type=float, default=2.0, help="rate step of the sweep before it bisects")
    ap.add_argument("--max-runs", type=int, default=5, help="rates tried per policy")
    ap.add_argument("--policies", nargs="+", default=None, help="only these, e.g. gyges static-2 (default: all)")
    ap.add_argument("--min-dwell", type=float, default=None, help="Gyges' minimum dwell before a split (s); the "
                    "server's default suits a trace at its own pace, not one compressed to a few tens of seconds")
    ap.add_argument("--max-num-batched-tokens", type=int, default=512, help="every server's token budget per "
                    "step (prompts prefill in chunks of it; a step's length, and so the TPOT of the requests decoding "
                    "beside a prefill, grows with it)")
    ap.add_argument("--long-prefill-token-threshold", type=int, default=0, help="every server's most tokens of "
                    "one prompt in a step (gyges serve's flag; 0: the whole budget)")
    ap.add_argument("--target-tpot-ms", default="0", help="every sweep server's --target-tpot-ms: a number "
                    f"(0, the default: off), or 'slo': {TARGET_SHARE} of the SLO's tightest TPOT limit, from the "
                    "unloaded baseline")
    ap.add_argument("--cost-profile", default=None, help="the hardware profile Gyges' policy prices reshapes with "
                    "(gyges serve --cost-profile; default: gyges/data/cpu_profile.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start-timeout", type=float, default=600.0)
    ap.add_argument("--out", default=str(RESULTS / "policies.json"))
    args = ap.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    stop_on_sigterm()
    devices = args.devices or ([2] if args.quick else [2, 4])
    t_all = time.perf_counter()
    model = (smollm2_sized_unpadded(export_hf_dir()) if args.model == UNPADDED
             else Path(args.model) if args.model else export_hf_dir())
    RESULTS.mkdir(exist_ok=True)
    results = {}
    for k in devices:
        for trace in args.traces:
            t0 = time.perf_counter()
            s = scaled(trace, k, args, model)
            print(f"{s.key}: {len(s.workload.requests)} requests, length scale {s.length_scale:.4f}, "
                  f"{s.device_memory / 2**20:.1f} MiB per device, KV tokens by TP {s.capacity}", flush=True)
            out, runs = compare(s)
            out["phases_s"] = s.phases | {"total": time.perf_counter() - t0}
            out["threads_per_device"] = s.threads
            out["model"], out["dtype"], out["max_num_batched_tokens"] = model.name, args.dtype, args.max_num_batched_tokens
            out["long_prefill_token_threshold"] = args.long_prefill_token_threshold
            out["target_tpot_ms"] = s.target_tpot_ms
            out["load_avg_1min"] = os.getloadavg()[0]  # at the end: other work on the machine skews every rate
            results[s.key] = out
            plot(s.key, out, runs, s.capacity[1])
            print(table(s.key, out), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out} in {time.perf_counter() - t_all:.0f} s", flush=True)


if __name__ == "__main__":
    main()
