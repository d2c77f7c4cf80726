"""Per-request records and the metrics `vllm bench serve` reports, computed exactly as it does:
TTFT to the first chunk with choices, E2EL to the last such chunk, TPOT = (E2EL - TTFT) / (output
tokens - 1), ITL per chunk pooled over requests, throughputs over the benchmark's span."""
from dataclasses import dataclass, field

import numpy as np

METRICS = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RequestRecord:
    """One request's outcome; times are seconds from the benchmark's start."""
    index: int
    prompt_len: int
    output_len: int  # requested
    send_s: float
    first_token_s: float | None = None
    finish_s: float | None = None  # last token chunk, or when the error was seen
    itl_s: list[float] = field(default_factory=list)
    output_tokens: int = 0  # the server's usage count, else token chunks received
    error: str = ""
    status: int | None = None  # HTTP status

    @property
    def success(self) -> bool:
        return not self.error and self.first_token_s is not None

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.send_s

    @property
    def e2el_s(self) -> float:
        return self.finish_s - self.send_s

    @property
    def tpot_s(self) -> float:
        """0 for a single output token, as vLLM counts it for goodput."""
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0


@dataclass
class Summary:
    mean: float
    median: float
    std: float
    percentiles: dict[float, float]


def summarize(values_s: list[float], percentiles: tuple[float, ...]) -> Summary:
    """Milliseconds; all zeros for no values, as vLLM prints them."""
    v = np.asarray(values_s or [0.0], dtype=float) * 1000.0
    return Summary(float(np.mean(v)), float(np.median(v)), float(np.std(v)),
                   {p: float(np.percentile(v, p)) for p in percentiles})


def meets_goodput(r: RequestRecord, goodput_ms: dict[str, float]) -> bool:
    """A completed request within every given limit (ttft, tpot, e2el in ms; vLLM's --goodput)."""
    if not r.success:
        return False
    values = {"ttft": r.ttft_s, "tpot": r.tpot_s, "e2el": r.e2el_s}
    return all(values[k] <= ms / 1000.0 for k, ms in goodput_ms.items())


@dataclass
class BenchMetrics:
    completed: int
    failed: int
    duration_s: float
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float | None
    output_throughput: float
    total_token_throughput: float
    stats: dict[str, Summary]  # by METRICS name


def span_s(records: list[RequestRecord]) -> float:
    """From the first send to the last finish, over every request that finished or failed."""
    ends = [r.finish_s for r in records if r.finish_s is not None]
    return max(ends) - min(r.send_s for r in records) if ends else 0.0


def compute_metrics(records: list[RequestRecord], percentiles: tuple[float, ...] = (90.0, 99.0),
                    goodput_ms: dict[str, float] | None = None, duration_s: float | None = None) -> BenchMetrics:
    """vLLM's calculate_metrics over `records`; duration defaults to `span_s(records)`."""
    if not records:
        raise ValueError("no requests to compute metrics over")
    done = [r for r in records if r.success]
    dur = span_s(records) if duration_s is None else duration_s
    if dur <= 0:
        raise ValueError(f"benchmark duration must be positive, got {dur}")
    total_in, total_out = sum(r.prompt_len for r in done), sum(r.output_tokens for r in done)
    values = {"ttft": [r.ttft_s for r in done], "tpot": [r.tpot_s for r in done if r.output_tokens > 1],
              "itl": [x for r in done for x in r.itl_s], "e2el": [r.e2el_s for r in done]}
    good = None if not goodput_ms else sum(meets_goodput(r, goodput_ms) for r in done) / dur
    return BenchMetrics(len(done), len(records) - len(done), dur, total_in, total_out, len(done) / dur, good,
                        total_out / dur, (total_in + total_out) / dur,
                        {k: summarize(v, percentiles) for k, v in values.items()})
