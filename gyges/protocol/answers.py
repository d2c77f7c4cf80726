"""What devices answer, and how they fail."""
from dataclasses import dataclass

import numpy as np


class WorkerError(RuntimeError):
    """A device raised, died or stopped answering."""


@dataclass
class TokenLogprob:
    """Log-probabilities of one sampled token under the raw model output (vLLM v1's default:
    before temperature, penalties and masks), so they describe the model, not the sampling."""
    token_id: int
    logprob: float
    rank: int                         # 1 = the model's most likely token
    top: list[tuple[int, float]]      # the `logprobs` most likely tokens and their logprobs, most likely first


@dataclass
class StepResult:
    """A step's answer: one token per request whose step reached the end of its tokens, in batch
    order. `steps` > 1: a stretch of that many identical decode steps (simulated devices), each
    request's token repeated."""
    tokens: list[int]
    logits: np.ndarray | None = None             # [len(tokens), vocab], when asked for
    logprobs: list[TokenLogprob | None] | None = None
    steps: int = 1


@dataclass(frozen=True)
class CopyDone:
    """A device's answer to CopyPages: bytes that left it, and how long its part took (what sizes
    the next chunk)."""
    sent: int
    seconds: float


@dataclass(frozen=True)
class TransformStats:
    """A device's answer to Transform. Phases start and end on `time.monotonic()` (one clock for
    every process of a host), so a phase's wall time is max(end) - min(start) over the devices."""
    kv_bytes_sent: int = 0
    kv_start: float = 0.0
    kv_end: float = 0.0
    weight_bytes_sent: int = 0
    weight_start: float = 0.0
    weight_end: float = 0.0
    peak_extra_bytes: int | None = None  # resident memory above the arena at the peak (None: unmeasured)

    @property
    def kv_s(self) -> float:
        return self.kv_end - self.kv_start

    @property
    def weight_s(self) -> float:
        return self.weight_end - self.weight_start


@dataclass(frozen=True)
class DeviceInfo:
    """A device's answer to Info: its arena, and each fast path with the reason it is off ("" when on)."""
    num_pages: int
    page_bytes: int
    pid: int
    kernels: bool
    kernels_reason: str
    peer_reads: bool
    peer_reads_reason: str
