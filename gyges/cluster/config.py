"""Cluster settings, checked once, with messages that say what to change."""
import os
from dataclasses import dataclass

from pydantic import ByteSize, TypeAdapter, ValidationError

_SIZE = TypeAdapter(ByteSize)


def parse_bytes(text: str | int) -> int:
    """A size like 512MiB, 2GiB or 1.5GB (pydantic's ByteSize), or a number of bytes."""
    try:
        return int(_SIZE.validate_python(text))
    except ValidationError:
        raise ValueError(f"cannot read {text!r} as a size; write it like 512MiB or 2GiB") from None


def usable_cores() -> int:
    """Cores this process may run on: taskset and cgroup cpusets count, the host's total does not."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def is_power_of_two(x: int) -> bool:
    return x >= 1 and not x & (x - 1)


def parse_layout(text: str | list[int], devices: int, max_tp: int) -> list[int]:
    """Instance sizes in device order, each a power of two at most `max_tp`, starting at a device
    index it divides (the buddy layout), together covering every device."""
    try:
        sizes = [int(x) for x in text.split(",")] if isinstance(text, str) else [int(x) for x in text]
    except ValueError:
        raise ValueError(f"cannot read the layout {text!r}; write instance sizes like 2,1,1") from None
    start = 0
    for s in sizes:
        if not is_power_of_two(s) or s > max_tp or start % s:
            raise ValueError(f"layout {text!r}: an instance of {s} device(s) cannot start at device {start} "
                             f"(sizes are powers of two up to --max-tp {max_tp}, starting at a multiple of their size)")
        start += s
    if start != devices:
        raise ValueError(f"layout {text!r} covers {start} device(s); --devices is {devices}")
    return sizes


@dataclass
class ClusterConfig:
    model: str | None = None
    devices: int = 1
    tp: int = 1
    max_tp: int | None = None
    device_memory: str | int = "512MiB"
    dtype: str = "bfloat16"
    device_type: str = "cpu"
    block_tokens: int = 16
    max_num_seqs: int = 64
    max_batched_tokens: int = 512
    long_prefill_tokens: int = 0  # most tokens of one prompt in a step (0: the whole budget)
    target_tpot_ms: float = 0.0   # a step carrying decodes takes the prompt tokens that keep it within this (0: off)
    threads_per_device: int | None = None
    cpu_kernels: bool = True  # bf16 on CPUs with AVX512-BF16: packed matmuls and paged decode in C (gyges/kernels)
    peer_reads: bool = True  # CPU: transformations read peers' arenas directly instead of gloo send/recv
    layout: str | list[int] | None = None  # instance sizes in device order, e.g. "2,1,1"; default: all --tp

    def __post_init__(self):
        if self.devices < 1:
            raise ValueError(f"--devices must be at least 1, got {self.devices}")
        if not is_power_of_two(self.tp):
            raise ValueError(f"--tp must be a power of two, got {self.tp}")
        if self.tp > self.devices or self.devices % self.tp:
            raise ValueError(f"--tp {self.tp} does not fit {self.devices} device(s): "
                             f"the devices must divide into groups of {self.tp}")
        if self.max_tp is None:
            self.max_tp = self.devices & -self.devices  # the largest power of two dividing the devices
        if not is_power_of_two(self.max_tp) or self.max_tp < self.tp or self.devices % self.max_tp:
            raise ValueError(f"--max-tp must be a power of two, at least --tp ({self.tp}), dividing --devices "
                             f"({self.devices}); got {self.max_tp}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"--dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.block_tokens < 1 or self.max_batched_tokens < 1 or self.max_num_seqs < 1:
            raise ValueError("block_tokens, max_batched_tokens and max_num_seqs must be positive")
        if self.long_prefill_tokens < 0:
            raise ValueError(f"--long-prefill-token-threshold must be 0 (off) or positive, got {self.long_prefill_tokens}")
        if self.target_tpot_ms < 0:
            raise ValueError(f"--target-tpot-ms must be 0 (off) or positive, got {self.target_tpot_ms}")
        self.sizes = parse_layout(self.layout, self.devices, self.max_tp) if self.layout else \
            [self.tp] * (self.devices // self.tp)
        self.memory_bytes = parse_bytes(self.device_memory)
        if self.threads_per_device is None:
            self.threads_per_device = max(1, usable_cores() // self.devices)
