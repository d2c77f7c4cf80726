"""What a benchmark sends, as pure functions of a trace and a seed: the trace shrunk to a machine
(`scale_trace`), when each request goes out (`gamma_arrivals`, `time_scale_for_rate`) and the exact
prompt token ids (`prompt_tokens`), so two runs, or two clients, send the same requests."""
import math
from dataclasses import dataclass, replace

import numpy as np

from gyges.bench.traces import HASH_BLOCK_TOKENS, TraceRequest

FIRST_TOKEN_ID = 100  # prompts use ids from here up: tokenizers keep special tokens among the lowest ids


@dataclass(frozen=True)
class Workload:
    requests: list[TraceRequest]  # arrival_s is each request's planned send time
    block_tokens: int  # prompt tokens per hash id after length scaling
    clipped: int  # requests shortened to fit max_model_len


def scale_trace(reqs: list[TraceRequest], time_scale: float = 1.0, length_scale: float = 1.0,
                max_model_len: int | None = None, max_requests: int | None = None) -> Workload:
    """The first `max_requests` requests with arrival times multiplied by `time_scale` (0.1: ten times
    the rate) and prompt and output lengths by `length_scale` (rounded, at least 1 token each; a hash id
    then covers 512 * length_scale tokens, so prefix sharing keeps its shape). A request longer than
    `max_model_len` in all keeps its output length and loses prompt tokens (down to 1, then output)."""
    if time_scale <= 0 or length_scale <= 0:
        raise ValueError(f"time and length scales must be positive, got {time_scale} and {length_scale}")
    if max_model_len is not None and max_model_len < 2:
        raise ValueError(f"max_model_len must be at least 2 (one prompt and one output token), got {max_model_len}")
    if max_requests is not None and max_requests < 1:
        raise ValueError(f"max_requests must be positive, got {max_requests}")
    block = max(1, round(HASH_BLOCK_TOKENS * length_scale))
    out, clipped = [], 0
    for r in reqs[:max_requests]:
        n_in, n_out = max(1, round(r.input_len * length_scale)), max(1, round(r.output_len * length_scale))
        if max_model_len is not None and n_in + n_out > max_model_len:
            clipped += 1
            n_out = min(n_out, max_model_len - 1)
            n_in = max_model_len - n_out
        out.append(TraceRequest(r.arrival_s * time_scale, n_in, n_out, r.hash_ids[:math.ceil(n_in / block)]))
    return Workload(out, block, clipped)


def time_scale_for_rate(reqs: list[TraceRequest], rate: float) -> float:
    """The `time_scale` at which the trace's own arrivals average `rate` requests per second."""
    span = reqs[-1].arrival_s - reqs[0].arrival_s
    if rate <= 0 or len(reqs) < 2 or span <= 0:
        raise ValueError(f"need a positive rate and a trace spanning time, got rate {rate}, "
                         f"{len(reqs)} requests over {span} s")
    return (len(reqs) - 1) / (span * rate)


def gamma_arrivals(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send times of n requests as in `vllm bench serve`: gaps drawn from a gamma distribution with
    shape `burstiness` and mean 1/rate (burstiness 1: Poisson; below 1 burstier; inf: evenly spaced),
    cumulated from the first draw and stretched so the last send is at n / rate. rate inf: all at 0."""
    if n < 1 or rate <= 0 or burstiness <= 0:
        raise ValueError(f"need n >= 1, rate > 0 and burstiness > 0, got {n}, {rate}, {burstiness}")
    if math.isinf(rate):
        return [0.0] * n
    if math.isinf(burstiness):
        gaps = np.full(n, 1.0 / rate)
    else:
        gaps = np.random.default_rng(seed).gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
    times = np.cumsum(gaps)
    return (times * (n / rate / times[-1])).tolist()


def spread_ties(trace: list[TraceRequest]) -> list[TraceRequest]:
    """Requests that share a timestamp spread evenly over the trace's resolution (its smallest gap
    between distinct timestamps). Mooncake's are whole seconds: 90% of its requests tie with the one
    before, and rescaling never separates a tie, so every rate would see the same bursts of up to 28
    simultaneous requests and the sweep would measure the bursts, not the rate."""
    times = sorted({r.arrival_s for r in trace})
    gaps = [b - a for a, b in zip(times, times[1:])]
    if len(times) == len(trace) or not gaps:
        return list(trace)
    res, out, i = min(gaps), [], 0
    while i < len(trace):
        j = i
        while j < len(trace) and trace[j].arrival_s == trace[i].arrival_s:
            j += 1
        out += [replace(r, arrival_s=r.arrival_s + res * k / (j - i)) for k, r in enumerate(trace[i:j])]
        i = j
    return out


def with_arrivals(reqs: list[TraceRequest], times: list[float]) -> list[TraceRequest]:
    if len(times) != len(reqs):
        raise ValueError(f"{len(times)} send times for {len(reqs)} requests")
    return [replace(r, arrival_s=t) for r, t in zip(reqs, times)]


def prompt_tokens(req: TraceRequest, index: int, block_tokens: int, vocab_size: int, seed: int = 0) -> list[int]:
    """Exactly req.input_len token ids in [FIRST_TOKEN_ID, vocab_size). Block i is drawn from
    (seed, hash_ids[i]), so requests sharing leading hash ids share that prefix; blocks without a hash
    id (Azure traces, or past the ids) are drawn from (seed, index, i) and shared with no one."""
    if vocab_size <= FIRST_TOKEN_ID:
        raise ValueError(f"vocab_size must exceed {FIRST_TOKEN_ID}, got {vocab_size}")
    out: list[int] = []
    for i in range(math.ceil(req.input_len / block_tokens)):
        key = [seed, 0, req.hash_ids[i]] if i < len(req.hash_ids) else [seed, 1, index, i]
        n = min(block_tokens, req.input_len - i * block_tokens)
        out += np.random.default_rng(key).integers(FIRST_TOKEN_ID, vocab_size, size=n).tolist()
    return out
