"""Fitting a hardware profile to measured steps: the pure half of `gyges simulate --fit`.

The profiling sweep (gyges/sim/profiling.py) runs batches of equal requests on the real engine and
times whole steps; this module turns the requests' progress into each step's load, splits the runs
into fitted and held-back ones, fits, and scores the fit on the runs it never saw (per step and per
run: a run's time is the sum of its steps, what a simulation of that run would predict).
"""
from dataclasses import asdict, dataclass, fields

import numpy as np

from gyges.policy.cost_model import CostModel, HardwareProfile, ModelProfile, StepLoad, StepSample, fit


@dataclass(frozen=True)
class Point:
    """One profiling run: `batch` requests per instance of `prompt` tokens, each generating `output`."""
    batch: int
    prompt: int
    output: int


@dataclass(frozen=True)
class Measured:
    """A timed step, tagged with the run it belongs to (\"tp1-b4-p64\")."""
    run: str
    sample: StepSample


def run_name(tp: int, p: Point) -> str:
    return f"tp{tp}-b{p.batch}-p{p.prompt}"


def step_load(progress: list[tuple[int, int, int]]) -> StepLoad:
    """A step's load from each sequence's (prompt length, computed before, computed after): a
    sequence past its prompt decoded one token over its length; one inside it prefilled a chunk
    over what was cached. Sequences that did not advance were not in the step."""
    prefills, decodes = [], []
    for prompt, before, after in progress:
        if after == before:
            continue
        if before >= prompt:
            decodes.append(after)
        else:
            prefills.append((after - before, before))
    return StepLoad.of(prefills, decodes)


def held_back(runs: list[str]) -> set[str]:
    """Every third run (by sorted name), never fitted: the error is measured on these."""
    return {r for i, r in enumerate(sorted(set(runs))) if i % 3 == 2}


def fit_profile(measured: list[Measured], model: ModelProfile, base: HardwareProfile,
                hold: set[str]) -> HardwareProfile:
    return fit([m.sample for m in measured if m.run not in hold], model, base)


def errors(cost: CostModel, measured: list[Measured]) -> dict:
    """Relative errors of the model's step times (each step) and run times (sum over a run's steps)."""
    if not measured:
        raise ValueError("no measured steps to score")
    pred = {id(m): cost.step_time(m.sample.tp, m.sample.load) for m in measured}
    step = [abs(pred[id(m)] / m.sample.seconds - 1) for m in measured]
    runs: dict[str, list[float]] = {}
    for m in measured:
        r = runs.setdefault(m.run, [0.0, 0.0])
        r[0] += pred[id(m)]
        r[1] += m.sample.seconds
    run = {name: p / s - 1 for name, (p, s) in sorted(runs.items())}
    return {"steps": len(measured), "step_median_abs": float(np.median(step)), "step_max_abs": float(max(step)),
            "run_max_abs": float(max(abs(e) for e in run.values())), "runs": run}


def sample_dict(m: Measured) -> dict:
    return {"run": m.run, **asdict(m.sample)}


def sample_of(d: dict) -> Measured:
    return Measured(d["run"], StepSample(**{f.name: d[f.name] for f in fields(StepSample) if f.name in d}))
