"""A whole benchmark from Python: `run_benchmark(BenchConfig(...)) -> BenchResult`. Builds the
workload (pure, gyges.bench.workload), sends each request at its time through `client.send`, and
computes vLLM's metrics and the SLO attainment."""
import asyncio
import contextlib
import math
import time
from dataclasses import asdict, dataclass, field

import aiohttp
from tqdm import tqdm

from gyges.bench.client import completion_payload, send
from gyges.bench.metrics import BenchMetrics, RequestRecord, compute_metrics
from gyges.bench.slo import Baseline, attainment, attains, class_of, meets_slo, missed_already, per_class
from gyges.bench.traces import TraceRequest, load_trace
from gyges.bench.workload import Workload, gamma_arrivals, prompt_tokens, scale_trace, with_arrivals


@dataclass
class BenchConfig:
    base_url: str
    trace: str = "mooncake-conversation"
    endpoint: str = "/v1/completions"
    model: str | None = None  # None: the first model the server lists
    time_scale: float = 1.0
    length_scale: float = 1.0
    max_model_len: int | None = None
    max_requests: int | None = None
    request_rate: float | None = None  # None: the trace's own timestamps; inf: all at once
    burstiness: float = 1.0
    max_concurrency: int | None = None
    seed: int = 0
    warmup: int = 0
    vocab_size: int = 32000
    ignore_eos: bool = True
    goodput_ms: dict[str, float] = field(default_factory=dict)
    slo: dict[str, float] = field(default_factory=dict)
    slo_baseline: Baseline | None = None
    percentiles: tuple[float, ...] = (90.0, 99.0)
    progress: bool = True
    timeout_s: float = 6 * 3600
    # stop as soon as this many requests have certainly missed the SLO (a rate sweep only needs to know
    # that a rate failed, and overloaded runs are the longest); the rest end as errors, i.e. misses
    give_up_misses: int | None = None

    def __post_init__(self):
        if not self.endpoint.endswith("/completions") or self.endpoint.endswith("chat/completions"):
            raise ValueError(f"endpoint {self.endpoint!r}: prompts are token ids, so a completions endpoint is needed")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be positive, got {self.max_concurrency}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be non-negative, got {self.warmup}")
        if self.slo and self.slo_baseline is None:
            raise ValueError("an SLO that scales with length needs a baseline of unloaded runs")
        if self.give_up_misses is not None and (self.give_up_misses < 1 or not self.slo):
            raise ValueError("give_up_misses needs an SLO and must be positive")


@dataclass
class BenchResult:
    config: BenchConfig
    workload: Workload
    records: list[RequestRecord]
    metrics: BenchMetrics
    slo_attainment: float | None
    gave_up: bool = False  # stopped early: give_up_misses requests had missed the SLO
    # per class (the smallest TP degree whose instance holds the request, as the server's /v1/cluster
    # says): (met the SLO, requests); None where the server does not say (not Gyges) or no SLO is set
    slo_by_class: dict[str, tuple[int, int]] | None = None

    @property
    def attains(self) -> bool | None:
        """Whether the run meets the SLO target overall, in every class, with no request failed."""
        if self.slo_attainment is None:
            return None
        classes = self.slo_by_class or {"all": (round(self.slo_attainment * len(self.records)), len(self.records))}
        return attains(self.slo_attainment, classes, self.metrics.failed)


def build_workload(cfg: BenchConfig) -> Workload:
    """The trace scaled, with the trace's times or arrivals drawn at cfg.request_rate."""
    w = scale_trace(load_trace(cfg.trace), cfg.time_scale, cfg.length_scale, cfg.max_model_len, cfg.max_requests)
    if cfg.request_rate is None:
        return w
    times = gamma_arrivals(len(w.requests), cfg.request_rate, cfg.burstiness, cfg.seed)
    return Workload(with_arrivals(w.requests, times), w.block_tokens, w.clipped)


async def _first_model(session: aiohttp.ClientSession, base_url: str) -> str:
    try:
        async with session.get(f"{base_url}/v1/models") as resp:
            resp.raise_for_status()
            models = (await resp.json())["data"]
    except (aiohttp.ClientError, KeyError, ValueError) as e:
        raise RuntimeError(f"no --model given and {base_url}/v1/models failed: {e}") from None
    if not models:
        raise RuntimeError(f"{base_url}/v1/models lists no model")
    return models[0]["id"]


async def benchmark(cfg: BenchConfig, workload: Workload | None = None) -> BenchResult:
    w = workload or build_workload(cfg)
    url = cfg.base_url.rstrip("/") + cfg.endpoint
    limit = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else contextlib.nullcontext()
    connector = aiohttp.TCPConnector(limit=cfg.max_concurrency or 0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=cfg.timeout_s)) as s:
        model = cfg.model or await _first_model(s, cfg.base_url.rstrip("/"))

        def payload(i: int, r: TraceRequest) -> dict:
            prompt = prompt_tokens(r, i, w.block_tokens, cfg.vocab_size, cfg.seed)
            return completion_payload(model, prompt, r.output_len, cfg.ignore_eos)

        if cfg.warmup:
            first = payload(0, w.requests[0])

            async def warm(i: int):
                async with limit:
                    await send(s, url, first, RequestRecord(i, w.requests[0].input_len, 0, 0.0), time.perf_counter())
            await asyncio.gather(*(warm(i) for i in range(cfg.warmup)))

        records = [RequestRecord(i, r.input_len, r.output_len, math.nan) for i, r in enumerate(w.requests)]
        bar = tqdm(total=len(records), disable=not cfg.progress, desc="requests")

        async def one(i: int, r: TraceRequest):
            async with limit:
                await send(s, url, payload(i, r), records[i], t0)
            bar.update(1)

        t0, tasks = time.perf_counter(), []
        gave_up = asyncio.Event()
        watch = asyncio.create_task(_watch(cfg, records, t0, gave_up)) if cfg.give_up_misses else None
        for i, r in enumerate(w.requests):
            delay = t0 + r.arrival_s - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(gave_up.wait(), delay)
            if gave_up.is_set():
                break
            tasks.append(asyncio.create_task(one(i, r)))
        done, stop = asyncio.ensure_future(asyncio.gather(*tasks)), asyncio.ensure_future(gave_up.wait())
        await asyncio.wait([done, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not gave_up.is_set():
            await done  # raises what a request task raised
        else:
            for t in tasks:
                t.cancel()  # the connection closes: the server aborts the request
            with contextlib.suppress(asyncio.CancelledError):
                await done
            end = time.perf_counter() - t0
            for rec in records:
                if rec.finish_s is None or math.isnan(rec.send_s):
                    rec.error = rec.error or f"not finished: the run gave up after {cfg.give_up_misses} SLO misses"
                    rec.send_s = end if math.isnan(rec.send_s) else rec.send_s
                    rec.finish_s = end
        if watch is not None:
            watch.cancel()
        bar.close()
        caps = await _capacities(s, cfg.base_url.rstrip("/")) if cfg.slo else None
    metrics = compute_metrics(records, cfg.percentiles, cfg.goodput_ms or None)
    slo = by_class = None
    if cfg.slo:
        outcomes = [(r.prompt_len, r.ttft_s if r.success else None,
                     r.tpot_s if r.success and r.output_tokens > 1 else None) for r in records]
        slo = attainment(outcomes, cfg.slo, cfg.slo_baseline)
        if caps:
            met = [(class_of(r.prompt_len + r.output_len, caps), meets_slo(*o, cfg.slo, cfg.slo_baseline))
                   for r, o in zip(records, outcomes)]
            by_class = {f"tp{c}" if c else "none": v for c, v in sorted(per_class(met).items(), key=lambda x: x[0] or 99)}
    return BenchResult(cfg, w, records, metrics, slo, gave_up.is_set(), by_class)


async def _capacities(session: aiohttp.ClientSession, base_url: str) -> dict[int, int] | None:
    """KV tokens of an instance at each TP degree, from a Gyges server's /v1/cluster (None elsewhere)."""
    try:
        async with session.get(f"{base_url}/v1/cluster") as resp:
            resp.raise_for_status()
            return {int(t): n for t, n in (await resp.json())["kv_capacity_by_tp"].items()}
    except (aiohttp.ClientError, KeyError, ValueError, TypeError):
        return None


async def _watch(cfg: BenchConfig, records: list[RequestRecord], t0: float, gave_up: asyncio.Event):
    """Set `gave_up` once cfg.give_up_misses requests have certainly missed the SLO."""
    while True:
        now = time.perf_counter() - t0
        misses = sum(missed_already(r.prompt_len, now - r.send_s, r.ttft_s if r.first_token_s is not None else None,
                                    bool(r.error), cfg.slo, cfg.slo_baseline)
                     for r in records if not math.isnan(r.send_s))
        if misses >= cfg.give_up_misses:
            gave_up.set()
            return
        await asyncio.sleep(0.2)


def run_benchmark(cfg: BenchConfig, workload: Workload | None = None) -> BenchResult:
    """Run a whole benchmark (blocking) and return its result; see `report` for the table and JSON."""
    return asyncio.run(benchmark(cfg, workload))


def config_json(cfg: BenchConfig) -> dict:
    d = asdict(cfg)
    d["slo_baseline"] = cfg.slo_baseline.to_json() if cfg.slo_baseline else None
    return {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}
