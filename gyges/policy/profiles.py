"""The CPU hardware profile the server's policy prices steps and transformations with: fitted to our
engine's measured steps on this machine by `gyges simulate --fit` (gyges/data/cpu_profile.json).

`CPU_NOMINAL` is the fit's starting point: round per-core figures for a 2.5 GHz x86 core (memory
10 GB/s, 64 bf16 FLOP per cycle, shared-memory all-reduce at 5 GB/s with 20 us latency). Only
their products with the fitted efficiencies mean anything; terms the sweep does not exercise keep
these values.
"""
import json
import math
from dataclasses import asdict
from pathlib import Path

from gyges.policy.cost_model import HardwareProfile

CPU_PROFILE_PATH = Path(__file__).resolve().parents[1] / "data" / "cpu_profile.json"

CPU_NOMINAL = HardwareProfile("cpu (nominal)", mem_bandwidth=10e9, peak_flops=160e9, link_bandwidth=5e9,
                              link_latency=20e-6, memory_bytes=512 * 2 ** 20)


def profile_dict(hw: HardwareProfile) -> dict:
    """JSON-ready: an infinite efficiency (a term the fit found free) is written as null."""
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(hw).items()}


def profile_of(d: dict) -> HardwareProfile:
    return HardwareProfile(**{k: (math.inf if v is None else v) for k, v in d.items()})


def cpu_profile(path: str | Path | None = None) -> HardwareProfile:
    """The fitted CPU profile from `path` (default: the one shipped in gyges/data)."""
    p = Path(path) if path is not None else CPU_PROFILE_PATH
    if not p.exists():
        raise FileNotFoundError(f"no CPU profile at {p}; make one with `gyges simulate --fit --fit-out {p}`")
    return profile_of(json.loads(p.read_text())["profile"])
