"""Service-level objectives. `--goodput ttft:MS tpot:MS e2el:MS` are vLLM's fixed limits;
`--slo ttft:5x tpot:5x` scales with length: a request meets it when its TTFT is within 5 times the
unloaded TTFT for its prompt length and its TPOT within 5 times the unloaded TPOT, both given by
lines a + b * prompt_len fitted to unloaded runs. Failed and rejected requests miss. Pure, and
shared with the simulator."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GOODPUT_METRICS = ("ttft", "tpot", "e2el")
SLO_METRICS = ("ttft", "tpot")


def _pairs(pairs: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for p in pairs:
        name, sep, value = p.partition(":")
        if not sep or not value:
            raise ValueError(f"{what} {p!r}: expected KEY:VALUE, e.g. ttft:500")
        out.append((name, value))
    return out


def parse_goodput(pairs: list[str]) -> dict[str, float]:
    """['ttft:500', 'tpot:50'] -> {'ttft': 500.0, 'tpot': 50.0} (milliseconds)."""
    out = {}
    for name, value in _pairs(pairs, "--goodput"):
        if name not in GOODPUT_METRICS:
            raise ValueError(f"--goodput {name}: unknown metric; expected one of {GOODPUT_METRICS}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {name}:{value}: not a number of milliseconds") from None
        if out[name] < 0:
            raise ValueError(f"--goodput {name}:{value}: must be non-negative")
    return out


def parse_slo(pairs: list[str]) -> dict[str, float]:
    """['ttft:5x', 'tpot:5x'] -> {'ttft': 5.0, 'tpot': 5.0} (multiples of the unloaded value)."""
    out = {}
    for name, value in _pairs(pairs, "--slo"):
        if name not in SLO_METRICS:
            raise ValueError(f"--slo {name}: unknown metric; expected one of {SLO_METRICS}")
        try:
            out[name] = float(value.removesuffix("x"))
        except ValueError:
            raise ValueError(f"--slo {name}:{value}: expected a multiple such as 5x") from None
        if not value.endswith("x") or out[name] <= 0:
            raise ValueError(f"--slo {name}:{value}: expected a positive multiple such as 5x")
    return out


@dataclass(frozen=True)
class Line:
    a: float
    b: float = 0.0

    def __call__(self, x: float) -> float:
        return self.a + self.b * x


def fit_line(xs: list[float], ys: list[float]) -> Line:
    """Least-squares a + b * x; a constant when every x is the same."""
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"need as many x as y values and at least one, got {len(xs)} and {len(ys)}")
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if np.ptp(x) == 0:
        return Line(float(y.mean()))
    b, a = np.polyfit(x, y, 1)
    return Line(float(a), float(b))


@dataclass(frozen=True)
class Baseline:
    """Unloaded TTFT and TPOT in seconds as functions of the prompt length."""
    ttft: Line
    tpot: Line

    def to_json(self) -> dict:
        return {"ttft": {"a": self.ttft.a, "b": self.ttft.b}, "tpot": {"a": self.tpot.a, "b": self.tpot.b}}


def fit_baseline(prompt_lens: list[int], ttfts_s: list[float], tpots_s: list[float | None]) -> Baseline:
    """Lines through unloaded measurements; a TPOT of None (one output token) is left out."""
    tp = [(p, t) for p, t in zip(prompt_lens, tpots_s) if t is not None]
    if not tp:
        raise ValueError("no unloaded request with more than one output token to fit TPOT to")
    return Baseline(fit_line(prompt_lens, ttfts_s), fit_line([p for p, _ in tp], [t for _, t in tp]))


def load_baseline(path: str | Path) -> Baseline:
    """A baseline JSON ({"ttft": {"a", "b"}, "tpot": {"a", "b"}}), or a `gyges bench` result file
    of an unloaded run, fitted from its successful requests."""
    data = json.loads(Path(path).read_text())
    if "ttft" in data and "tpot" in data:
        return Baseline(Line(**data["ttft"]), Line(**data["tpot"]))
    if "requests" not in data:
        raise ValueError(f"{path}: neither a baseline ({{'ttft', 'tpot'}}) nor a gyges bench result ('requests')")
    ok = [r for r in data["requests"] if not r["error"] and r["first_token_s"] is not None]
    if not ok:
        raise ValueError(f"{path}: no successful request to fit a baseline to")
    return fit_baseline([r["prompt_len"] for r in ok], [r["first_token_s"] - r["send_s"] for r in ok],
                        [(r["finish_s"] - r["first_token_s"]) / (r["output_tokens"] - 1) if r["output_tokens"] > 1
                         else None for r in ok])


def meets_slo(prompt_len: int, ttft_s: float | None, tpot_s: float | None, slo: dict[str, float],
              baseline: Baseline) -> bool:
    """ttft_s None: the request failed or was rejected (a miss). tpot_s None: one output token (no TPOT)."""
    if ttft_s is None:
        return False
    if "ttft" in slo and ttft_s > slo["ttft"] * baseline.ttft(prompt_len):
        return False
    return not ("tpot" in slo and tpot_s is not None and tpot_s > slo["tpot"] * baseline.tpot(prompt_len))


def attainment(outcomes: list[tuple[int, float | None, float | None]], slo: dict[str, float],
               baseline: Baseline) -> float:
    """Share of (prompt_len, ttft_s, tpot_s) outcomes that meet the SLO."""
    if not outcomes:
        raise ValueError("no requests to measure SLO attainment over")
    return sum(meets_slo(p, t, s, slo, baseline) for p, t, s in outcomes) / len(outcomes)


def missed_already(prompt_len: int, waited_s: float, ttft_s: float | None, failed: bool, slo: dict[str, float],
                   baseline: Baseline) -> bool:
    """Whether a request still running (or done) has certainly missed the SLO: it failed, its first
    token came too late, or none came within the TTFT limit after `waited_s`. A TPOT miss is only
    certain at the end, so it is not counted: the count never overstates."""
    if failed:
        return True
    if "ttft" not in slo:
        return False
    limit = slo["ttft"] * baseline.ttft(prompt_len)
    return (ttft_s if ttft_s is not None else waited_s) > limit


def class_of(need_tokens: int, capacity_by_tp: dict[int, int]) -> int | None:
    """A request's class: the smallest TP degree whose instance holds its KV need (None: none does)."""
    return next((t for t in sorted(capacity_by_tp) if capacity_by_tp[t] >= need_tokens), None)


def per_class(outcomes: list[tuple[int | None, bool]]) -> dict[int | None, tuple[int, int]]:
    """(class, met the SLO) of each request -> class -> (met, requests)."""
    out: dict[int | None, tuple[int, int]] = {}
    for cls, met in outcomes:
        m, n = out.get(cls, (0, 0))
        out[cls] = (m + met, n + 1)
    return out


def class_meets(met: int, requests: int, target: float = 0.9) -> bool:
    """A class meets the target when `target` of its requests met the SLO, or, in a class of fewer than
    20, all but 2 did: a few long requests cannot be held to a percentage."""
    return met >= target * requests - 1e-9 or (requests < 20 and requests - met <= 2)


def attains(overall: float, classes: dict[int | None, tuple[int, int]], rejected: int, target: float = 0.9) -> bool:
    """"Max rate at SLO" holds at a rate when `target` of all requests met the SLO, every class did
    (`class_meets`), and no request was rejected: a layout that rejects or starves the few long
    requests must not win on the rest."""
    return overall >= target - 1e-9 and rejected == 0 and all(class_meets(m, n, target) for m, n in classes.values())
