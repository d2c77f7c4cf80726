"""Time of a step, throughput of an instance and cost of a transformation, from bytes and FLOPs.

One model serves the policy (is a merge or split worth it?) and the simulator (its clock). A step's
time is a sum of terms, each a quantity over a rate times an efficiency:
    weight and KV bytes read / (memory bandwidth * e_mem)
  + FLOPs / (peak FLOP/s * e_flop)
  + two all-reduces per layer: ring bytes / (link bandwidth * e_link) + latency each
  + a fixed per-step overhead.
A sum, not a roofline max: it is linear in the inverse rates, so `fit` finds them by least squares
from measured steps, and on CPUs the memory-bound and compute-bound operators of a step do not
overlap anyway (on GPUs the fitted efficiencies absorb what overlap there is).
"""
import math
from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np

from gyges.memory.layout import HeadPadding
from gyges.model.config import ModelConfig


@dataclass(frozen=True)
class ModelProfile:
    """The sizes that set a model's bytes and FLOPs, with heads padded for `max_tp` as the engine pads them."""
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    dtype_bytes: int
    max_tp: int
    padded_heads: int
    padded_kv_heads: int
    padded_intermediate: int
    tied_embeddings: bool = True
    qkv_bias: bool = False

    @classmethod
    def from_config(cls, config: ModelConfig, max_tp: int, dtype_bytes: int) -> "ModelProfile":
        pad = HeadPadding.of(config, max_tp)
        return cls(config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim,
                   config.intermediate_size, config.vocab_size, dtype_bytes, max_tp, pad.num_heads,
                   pad.num_kv_heads, pad.intermediate_size, config.tie_word_embeddings, config.qkv_bias)

    @property
    def sharded_params(self) -> int:
        """Parameters split across ranks (padded): q, k, v (and bias), o, gate, up, down of every layer."""
        qkv_rows = (self.padded_heads + 2 * self.padded_kv_heads) * self.head_dim
        per_layer = (qkv_rows * self.hidden + (qkv_rows if self.qkv_bias else 0)
                     + self.hidden * self.padded_heads * self.head_dim + 3 * self.padded_intermediate * self.hidden)
        return self.layers * per_layer

    @property
    def replicated_params(self) -> int:
        """Parameters every device holds whole: embeddings, the head if untied, norms."""
        heads = 1 if self.tied_embeddings else 2
        return heads * self.vocab * self.hidden + (2 * self.layers + 1) * self.hidden

    def weight_bytes(self, tp: int) -> int:
        """Weight bytes one device of a TP-`tp` instance holds."""
        self.check_tp(tp)
        return (self.replicated_params + self.sharded_params // tp) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token, every layer, every (padded) KV head: spread over the instance's devices."""
        return self.layers * 2 * self.padded_kv_heads * self.head_dim * self.dtype_bytes

    def check_tp(self, tp: int) -> None:
        if tp < 1 or tp & (tp - 1) or tp > self.max_tp:
            raise ValueError(f"TP degree must be a power of two up to max_tp {self.max_tp}, got {tp}")


@dataclass(frozen=True)
class HardwareProfile:
    """One device and its links. Rates are nominal; efficiencies (fitted or measured) scale them.

    An efficiency of `math.inf` means the term did not show in the measurements: it costs nothing.
    """
    name: str
    mem_bandwidth: float            # bytes/s, one device
    peak_flops: float               # FLOP/s, one device
    link_bandwidth: float           # bytes/s each device sends and receives, inside a host
    link_latency: float             # seconds per all-reduce
    memory_bytes: int               # per device, for weights and KV cache
    mem_efficiency: float = 1.0
    flop_efficiency: float = 1.0
    link_efficiency: float = 1.0
    transfer_efficiency: float = 1.0  # transformation moves (peer reads, NCCL send/recv) over link_bandwidth
    step_overhead_s: float = 0.0      # scheduling, launch, Python: paid once per step
    switch_overhead_s: float = 0.0    # a transformation's switch: barriers, rebinding, new block tables
    tp_efficiency: float = 1.0        # memory and FLOP rates achieved per doubling of the TP degree (smaller
                                      # per-device GEMMs, per-shard launches); 1.0: TP costs only its all-reduces

    def __post_init__(self):
        for name in ("mem_bandwidth", "peak_flops", "link_bandwidth", "memory_bytes", "mem_efficiency",
                     "flop_efficiency", "link_efficiency", "transfer_efficiency", "tp_efficiency"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{self.name}: {name} must be positive, got {getattr(self, name)}")
        for name in ("link_latency", "step_overhead_s", "switch_overhead_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{self.name}: {name} must be non-negative, got {getattr(self, name)}")


@dataclass(frozen=True)
class StepLoad:
    """What one step computes. `context_tokens` counts (query, key) pairs attention works on:
    a decode adds its sequence's length; a prefill chunk of n tokens over c cached ones adds
    n * (c + (n + 1) / 2). Attention's FLOPs scale with it. `kv_read_tokens`: KV tokens read from
    memory; a decode reads its sequence's, a prefill chunk its cached prefix and itself once (the
    attention kernel keeps K/V tiles on chip: the pairs' cost is in the FLOPs). None: the same as
    `context_tokens`, which is exact when every entry is a decode."""
    prefill_tokens: int = 0
    decode_tokens: int = 0
    context_tokens: float = 0
    kv_read_tokens: float | None = None

    @property
    def kv_tokens(self) -> float:
        return self.context_tokens if self.kv_read_tokens is None else self.kv_read_tokens

    @classmethod
    def of(cls, prefills: Iterable[tuple[int, int]] = (), decode_lens: Iterable[int] = ()) -> "StepLoad":
        """From prefill chunks (tokens, cached tokens before them) and decoding sequences' lengths."""
        prefills, decode_lens = list(prefills), list(decode_lens)
        pairs = sum(n * (c + (n + 1) / 2) for n, c in prefills) + sum(decode_lens)
        kv = sum(c + n for n, c in prefills) + sum(decode_lens)
        return cls(sum(n for n, _ in prefills), len(decode_lens), pairs, kv if prefills else None)

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens


@dataclass(frozen=True)
class ServingLoad:
    """Requests an instance is given: how many, and each one's mean KV need, mean decode context and
    mean prompt. A prompt of 0 counts decode only (the paper figures' steady decode)."""
    requests: int
    need_tokens: float
    context_tokens: float
    prompt_tokens: float = 0.0


@dataclass(frozen=True)
class TransformCost:
    time_s: float    # start to finish (pre-copy runs while the instances keep decoding)
    stall_s: float   # the switch, when the instances involved make no step


@dataclass(frozen=True)
class StepSample:
    """One measured step, for `fit`."""
    tp: int
    prefill_tokens: int
    decode_tokens: int
    context_tokens: float
    seconds: float
    kv_read_tokens: float | None = None

    @property
    def load(self) -> StepLoad:
        return StepLoad(self.prefill_tokens, self.decode_tokens, self.context_tokens, self.kv_read_tokens)


class CostModel:
    WHOLE_WEIGHTS = False  # every device of an instance keeps the whole model (a sequence-parallel peer's model)

    def __init__(self, model: ModelProfile, hw: HardwareProfile):
        self.model, self.hw = model, hw
        self._units: tuple[float, ...] | None = None  # unit_costs, once
        self._per_tp: dict[int, tuple] = {}  # each degree's per-token constants of `terms`
        self._chunks: dict[tuple[int, int], float] = {}  # (degree, prefill chunk) -> its step time

    def terms(self, tp: int, load: StepLoad) -> tuple[float, float, float, float, float]:
        """(bytes read, FLOPs, all-reduce bytes, all-reduces, steps) of one device (rank 0, which also
        runs the head): the step time is their dot product with `unit_costs`. Bytes and FLOPs are
        scaled up by 1 / tp_efficiency per doubling of `tp`. Plain floats over per-degree constants:
        the simulator and the router price hundreds of thousands of steps."""
        if load.tokens == 0:
            self.model.check_tp(tp)
            return 0.0, 0.0, 0.0, 0.0, 0.0
        c = self._per_tp.get(tp) or self._constants(tp)
        weights, head_bytes, kv_bytes, token_flops, head_flops, pair_flops, reduces, ring, slow = c
        read = weights + (head_bytes if load.decode_tokens else 0) + load.kv_tokens * kv_bytes
        flops = load.tokens * token_flops + load.decode_tokens * head_flops + load.context_tokens * pair_flops
        return read / slow, flops / slow, ring * load.tokens, reduces, 1.0

    def _constants(self, tp: int) -> tuple:
        m = self.model
        m.check_tp(tp)
        head = m.vocab * m.hidden  # logits for decode rows only; a prefill's last row is noise beside its chunk
        reduces = 2 * m.layers if tp > 1 else 0
        c = (m.sharded_params / tp * m.dtype_bytes, head * m.dtype_bytes, m.kv_bytes_per_token / tp,
             2 * m.sharded_params / tp, 2 * head, 4 * m.layers * m.padded_heads * m.head_dim / tp, reduces,
             reduces * 2 * (tp - 1) / tp * m.hidden * m.dtype_bytes, self.hw.tp_efficiency ** math.log2(tp))
        self._per_tp[tp] = c
        return c

    def quantities(self, tp: int, load: StepLoad) -> np.ndarray:
        return np.array(self.terms(tp, load))

    def unit_costs(self) -> np.ndarray:
        h = self.hw
        return np.array([1 / (h.mem_bandwidth * h.mem_efficiency), 1 / (h.peak_flops * h.flop_efficiency),
                         1 / (h.link_bandwidth * h.link_efficiency), h.link_latency, h.step_overhead_s])

    def step_time(self, tp: int, load: StepLoad) -> float:
        """Seconds one step of a TP-`tp` instance takes for `load` (0 when it has nothing to compute)."""
        if self._units is None:
            self._units = tuple(float(u) for u in self.unit_costs())
        return sum(q * u for q, u in zip(self.terms(tp, load), self._units))

    def prefill_time(self, tp: int, prompt: int, chunk: int) -> float:
        """Seconds a prompt alone takes on an idle TP-`tp` instance, in chunks of `chunk` tokens (each
        chunk priced as the first: the cached prefix's share is small beside the chunk's matmuls)."""
        chunk = max(1, min(prompt, chunk))
        key = (tp, chunk)
        if key not in self._chunks:
            self._chunks[key] = self.step_time(tp, StepLoad(chunk, 0, chunk * (chunk + 1) / 2, chunk))
        return -(-prompt // chunk) * self._chunks[key]

    def decode_time(self, tp: int, decode_lens: Iterable[int], steps: int) -> float:
        """Seconds for `steps` decode steps of an unchanging batch (the simulator's fast-forward between
        events): each step every sequence grows by one, and a step's time is linear in the context, so
        the sum is `steps` steps at the mean context."""
        lens = list(decode_lens)
        if steps < 0:
            raise ValueError(f"steps must be non-negative, got {steps}")
        mean_pairs = sum(lens) + len(lens) * (steps - 1) / 2
        return steps * self.step_time(tp, StepLoad(decode_tokens=len(lens), context_tokens=mean_pairs))

    def kv_capacity_tokens(self, tp: int, block_tokens: int = 1) -> int:
        """KV tokens an empty TP-`tp` instance holds: each device's memory minus its weights, in whole blocks."""
        per_device = self.hw.memory_bytes - self.model.weight_bytes(1 if self.WHOLE_WEIGHTS else tp)
        if per_device <= 0:
            return 0
        tokens = per_device * tp // self.model.kv_bytes_per_token
        return tokens // block_tokens * block_tokens

    def concurrency(self, load: ServingLoad, kv_capacity_tokens: int, max_batch: int) -> int:
        """How many of the requests run at once: no more than the batch limit or the KV cache allows."""
        if load.requests <= 0:
            return 0
        fits = int(kv_capacity_tokens // max(load.need_tokens, 1))
        return max(0, min(load.requests, max_batch, fits))

    def throughput(self, tp: int, load: ServingLoad, kv_capacity_tokens: int, max_batch: int,
                   max_batched_tokens: int | None = None) -> float:
        """Tokens/s (prompt and output) of a TP-`tp` instance serving `load`, in waves: as many requests
        as the batch limit and the KV cache allow prefill their prompts in chunks of
        `max_batched_tokens` (None: one chunk), then decode the rest of their outputs together (the
        prefill makes the first token). A KV-starved instance runs small waves; where prompts
        dominate, steps are few and long, and a bigger batch buys little. With no prompt, decode
        tokens/s of the steady batch."""
        n = self.concurrency(load, kv_capacity_tokens, max_batch)
        if n == 0:
            return 0.0
        decode = StepLoad(decode_tokens=n, context_tokens=n * load.context_tokens)
        if load.prompt_tokens <= 0:
            return n / self.step_time(tp, decode)
        prompts = n * load.prompt_tokens
        chunks = math.ceil(prompts / max_batched_tokens) if max_batched_tokens else 1
        prefill = StepLoad(prefill_tokens=round(prompts / chunks),
                           context_tokens=n * load.prompt_tokens * (load.prompt_tokens + 1) / 2 / chunks,
                           kv_read_tokens=prompts / chunks)
        steps_decoding = max(load.need_tokens - load.prompt_tokens - 1, 0)
        wave_s = chunks * self.step_time(tp, prefill) + steps_decoding * self.step_time(tp, decode)
        return n * load.need_tokens / wave_s

    def transform_cost(self, moved_bytes: float, switch_bytes: float, devices: int) -> TransformCost:
        """A transformation moving `moved_bytes` in all (pre-copy and switch), `switch_bytes` of them
        during the switch, spread evenly over `devices` that each receive at the transfer rate."""
        if devices < 1 or moved_bytes < 0 or not 0 <= switch_bytes <= moved_bytes:
            raise ValueError(f"bad transformation: {moved_bytes} bytes moved, {switch_bytes} in the switch, "
                             f"{devices} devices")
        rate = devices * self.hw.link_bandwidth * self.hw.transfer_efficiency
        stall = self.hw.switch_overhead_s + switch_bytes / rate
        return TransformCost(moved_bytes / rate + self.hw.switch_overhead_s, stall)


def fit(samples: Iterable[StepSample], model: ModelProfile, base: HardwareProfile) -> HardwareProfile:
    """`base` with the efficiencies, link latency and step overhead that best explain the measured steps.

    Least squares on the per-unit costs, none allowed negative: a term fitted below zero is dropped
    and the rest refitted (its efficiency becomes inf, its latency or overhead 0). Terms no sample
    exercises (all-reduces when every sample is TP1) keep `base`'s values.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("fit needs at least one measured step")
    cost = CostModel(model, base)
    x = np.array([cost.quantities(s.tp, s.load) for s in samples])
    y = np.array([s.seconds for s in samples])
    known = cost.unit_costs()
    free = [j for j in range(x.shape[1]) if np.any(x[:, j])]
    if len(samples) < len(free):
        raise ValueError(f"fit needs at least {len(free)} measured steps for {len(free)} terms, got {len(samples)}")
    coef = known.copy()
    while free:
        scale = np.abs(x[:, free]).max(axis=0)  # columns differ by ~1e12: scale them for a stable solve
        sol = np.linalg.lstsq(x[:, free] / scale, y, rcond=None)[0] / scale
        if sol.min() >= 0:
            coef[free] = sol
            break
        coef[free[int(sol.argmin())]] = 0.0
        free.pop(int(sol.argmin()))
    return replace(base, mem_efficiency=_efficiency(coef[0], base.mem_bandwidth),
                   flop_efficiency=_efficiency(coef[1], base.peak_flops),
                   link_efficiency=_efficiency(coef[2], base.link_bandwidth), link_latency=float(coef[3]),
                   step_overhead_s=float(coef[4]))


def _efficiency(unit_cost: float, rate: float) -> float:
    return math.inf if unit_cost == 0 else float(1 / (unit_cost * rate))
