"""What a benchmark leaves behind: vLLM's result table, a JSON result with per-request records, and
the exact requests with their send times as a JSONL trace that `vllm bench serve` replays."""
import itertools
import json
import math
from dataclasses import asdict
from pathlib import Path

from gyges.bench.metrics import METRICS
from gyges.bench.runner import BenchResult, config_json
from gyges.bench.workload import prompt_tokens

TITLES = {"ttft": ("TTFT", "Time to First Token"), "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
          "itl": ("ITL", "Inter-token Latency"), "e2el": ("E2EL", "End-to-end Latency")}


def _p(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def table(res: BenchResult) -> str:
    m, cfg = res.metrics, res.config
    rows = [("Successful requests:", m.completed), ("Failed requests:", m.failed)]
    rows += [("Requests clipped to max-model-len:", res.workload.clipped)] if cfg.max_model_len else []
    rows += [("Maximum request concurrency:", cfg.max_concurrency)] if cfg.max_concurrency else []
    rows += [("Request rate configured (RPS):", cfg.request_rate)] if cfg.request_rate is not None else []
    rows += [("Benchmark duration (s):", m.duration_s), ("Total input tokens:", m.total_input),
             ("Total generated tokens:", m.total_output), ("Request throughput (req/s):", m.request_throughput)]
    rows += [("Request goodput (req/s):", m.request_goodput)] if m.request_goodput is not None else []
    rows += [("Output token throughput (tok/s):", m.output_throughput),
             ("Total token throughput (tok/s):", m.total_token_throughput)]
    rows += [("SLO attainment (%):", 100 * res.slo_attainment)] if res.slo_attainment is not None else []
    rows += [(f"  class {c} (smallest TP holding it) (%):", f"{100 * m / n:.2f} of {n}")
             for c, (m, n) in (res.slo_by_class or {}).items()]
    rows += [("Meets the SLO target (overall, every class):", "yes" if res.attains else "no")] \
        if res.attains is not None else []
    out = ["{:=^50}".format(" Serving Benchmark Result ")]
    out += [f"{k:<40} {v:<10.2f}" if isinstance(v, float) else f"{k:<40} {v:<10}" for k, v in rows]
    for name in METRICS:
        short, title = TITLES[name]
        s = m.stats[name]
        out.append("{:-^50}".format(title))
        out += [f"{f'Mean {short} (ms):':<40} {s.mean:<10.2f}", f"{f'Median {short} (ms):':<40} {s.median:<10.2f}"]
        out += [f"{f'P{_p(p)} {short} (ms):':<40} {v:<10.2f}" for p, v in s.percentiles.items()]
    return "\n".join(out + ["=" * 50])


def result_json(res: BenchResult) -> dict:
    """vLLM's result keys (completed, request_throughput, mean_ttft_ms, p99_ttft_ms, ...) plus the
    config, the SLO attainment and one record per request."""
    m = res.metrics
    out = {"config": config_json(res.config), "clipped": res.workload.clipped, "duration": m.duration_s,
           "completed": m.completed, "failed": m.failed, "total_input_tokens": m.total_input,
           "total_output_tokens": m.total_output, "request_throughput": m.request_throughput,
           "request_goodput": m.request_goodput, "output_throughput": m.output_throughput,
           "total_token_throughput": m.total_token_throughput, "slo_attainment": res.slo_attainment,
           "slo_attainment_by_class": None if res.slo_by_class is None else
           {c: {"met": met, "requests": n, "attainment": met / n} for c, (met, n) in res.slo_by_class.items()},
           "meets_slo_target": res.attains}
    for name in METRICS:
        s = m.stats[name]
        out |= {f"mean_{name}_ms": s.mean, f"median_{name}_ms": s.median, f"std_{name}_ms": s.std}
        out |= {f"p{_p(p)}_{name}_ms": v for p, v in s.percentiles.items()}
    out["requests"] = [asdict(r) for r in res.records]
    return out


def replay_lines(res: BenchResult) -> list[dict]:
    """One JSON object per request in send order: Mooncake / vLLM timed-trace fields (`timestamp` in
    ms of the actual send after the first, `input_length`, `output_length`, `hash_ids` of
    `block_tokens`-token blocks) and the exact `prompt` token ids with `output_tokens`.

    vLLM's timed_trace builds a prompt of one chunk per hash id, so every block gets one: blocks the
    trace names none for (Azure traces, or past the ids) get fresh ids shared with no one, as
    `prompt_tokens` draws them. Replay with `--timed-trace-chunk-hash-size` = `block_tokens` and
    `--timed-trace-sec-multiplier 0.001`."""
    cfg, w = res.config, res.workload
    sent = sorted(res.records, key=lambda r: r.send_s)
    t0 = sent[0].send_s
    fresh = itertools.count(1 + max((h for r in w.requests for h in r.hash_ids), default=-1))

    def hash_ids(r) -> list[int]:
        ids = list(w.requests[r.index].hash_ids)
        return ids + [next(fresh) for _ in range(math.ceil(r.prompt_len / w.block_tokens) - len(ids))]
    return [{"timestamp": round((r.send_s - t0) * 1000.0, 3), "input_length": r.prompt_len,
             "output_length": r.output_len, "hash_ids": hash_ids(r),
             "block_tokens": w.block_tokens, "output_tokens": r.output_len,
             "prompt": prompt_tokens(w.requests[r.index], r.index, w.block_tokens, cfg.vocab_size, cfg.seed)}
            for r in sent]


def write_json(path: str | Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def write_replay(path: str | Path, res: BenchResult) -> None:
    Path(path).write_text("".join(json.dumps(line) + "\n" for line in replay_lines(res)))
