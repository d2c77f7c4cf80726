"""Many rate searches at once (`gyges simulate --compare`, benchmarks/sim_grid.py): every policy of one
or more settings, on a pool of processes, each search starting just under the rate no layout exceeds
(the same rates for every policy on the same cost model, so that policies that behave alike score alike).

A static layout is not searched when it cannot serve every request (its largest instance does not
hold the longest one), nor when its own bound (`layout_rates`, the planner's pricing at full
utilization) is below a rate another static layout of the same setting already sustained: it cannot
be the best static layout. The best layouts by bound are searched first, so that this prunes most."""
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
import multiprocessing as mp

from gyges.sim.bound import layout_rates, rate_bound
from gyges.sim.compare import Setting, search
from gyges.sim.run import SimResult

START = 0.9    # a search starts at this share of the bound: sustained rates were at most 0.84 of it
FACTOR = 1.5   # and brackets by this factor (runs above the boundary stop early, so start high)


@dataclass(frozen=True)
class Job:
    key: str                  # the setting
    name: str                 # the policy
    start: float              # where its rate search starts
    bound: float | None       # a static layout's own bound (None: not a static layout)
    sizes: tuple[int, ...] | None   # a static layout's instance sizes per host
    rank: int                 # searched in rank order across settings
    why: str | None = None    # why it needs no search, known before any run


Done = Callable[[str, str, dict, float], None]


def search_many(settings: dict[str, Setting], names: dict[str, list[str]], workers: int = 1,
                keep_runs: bool = False, on_done: Done | None = None) -> tuple[dict[str, dict[str, dict]], dict]:
    """Each setting's policies at their highest rate at the SLO: {key: {name: figures}}, and with
    `keep_runs` each policy's run at that rate ({(key, name): SimResult}). `on_done(key, name,
    figures, seconds)` is called as each finishes (in this process)."""
    jobs = sorted((j for key in settings for j in plan(key, settings[key], names[key])),
                  key=lambda j: (j.rank, list(settings).index(j.key)))
    results: dict[str, dict[str, dict]] = {key: {} for key in settings}
    runs: dict[tuple[str, str], SimResult] = {}
    pending, running = deque(jobs), {}

    def finish(job: Job, out: dict, run: SimResult | None, took: float) -> None:
        results[job.key][job.name] = out
        if run is not None:
            runs[job.key, job.name] = run
        if on_done:
            on_done(job.key, job.name, out, took)

    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) if workers > 1 else _Inline()
    with pool:
        while pending or running:
            while pending and len(running) < workers:
                job = pending.popleft()
                why = skipped(job, results[job.key])
                if why:
                    finish(job, {"max_rate_at_slo": None, "skipped": why}, None, 0.0)
                    continue
                running[pool.submit(_search, settings[job.key], job.name, job.start, keep_runs)] = job
            if running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for f in done:
                    finish(running.pop(f), *f.result())
    return {key: {n: results[key][n] for n in names[key]} for key in settings}, runs


def plan(key: str, setting: Setting, names: list[str]) -> list[Job]:
    """The setting's searches: the static layout with the highest bound (both routers) first, then
    Gyges and the peers, then the other static layouts by their bounds."""
    pols, setup = setting.policies(), setting.setup
    phases = [[(r.input_len, r.output_len) for r in ph] for ph in (setting.phases() or [setting.requests])]
    flat = [r for ph in phases for r in ph]
    statics = {n: pols[n][1] for n in names if n.startswith("static")}
    bounds = layout_rates(setup.cost(), setup.kv_capacities(), phases, setup.host, setup.gpus,
                          setup.policy_config()) if statics else {}
    order = sorted({bounds.get(s, 0.0) for s in statics.values()}, reverse=True)
    need = max(r.input_len + r.output_len for r in setting.requests)
    starts = {}  # one rate bound per cost model: every static layout and most peers share it
    jobs = []
    for n in names:
        on = pols[n][2]
        if on.cost_model not in starts:
            starts[on.cost_model] = _start(on, flat, setting.native)
        start = starts[on.cost_model]
        if n in statics:
            b = bounds.get(statics[n], 0.0)
            jobs.append(Job(key, n, start, b, statics[n], 0 if b == order[0] else 2 + order.index(b),
                            cannot_hold(statics[n], setup, need)))
        else:
            jobs.append(Job(key, n, start, None, None, 1, _cannot_start(*pols[n][1:])))
    return jobs


def cannot_hold(sizes: tuple[int, ...], setup, need: int) -> str | None:
    """Why a static layout would reject requests at every rate: its largest instance does not hold the longest."""
    held = setup.kv_capacities().get(max(sizes), 0)
    if held < need:
        return f"its largest instance (TP{max(sizes)}) holds {held} tokens, the longest request needs {need}"
    return None


def _cannot_start(sizes: tuple[int, ...] | None, setup) -> str | None:
    """Why a peer cannot run the model at all: its starting instances do not hold the weights."""
    small = min(sizes) if sizes else None
    if small and setup.cost().kv_capacity_tokens(small, setup.block_tokens) <= 0:
        return f"its TP{small} instances do not hold the model's weights on this GPU"
    return None


def skipped(job: Job, done: dict[str, dict]) -> str | None:
    """Why a job needs no search (None: search it)."""
    if job.why or job.bound is None:
        return job.why
    rates = {n: r["max_rate_at_slo"] for n, r in done.items()
             if n.startswith("static") and r.get("rejected") == 0 and r.get("max_rate_at_slo")}
    best = max(rates, key=rates.get, default=None)
    if best and job.bound <= rates[best]:
        return f"its bound {job.bound:.3g} req/s is below {best}'s {rates[best]:.3g} at the SLO"
    return None


def _start(setup, requests: list[tuple[int, int]], native: float) -> float:
    """Just under the rate no layout of this setup exceeds (the workload's own rate if none holds it)."""
    try:
        b = rate_bound(setup.cost(), setup.kv_capacities(), requests, setup.gpus, setup.max_num_seqs,
                       setup.max_batched_tokens)
    except ValueError:
        return native
    return START * b.max_rate


def _search(setting: Setting, name: str, start: float, keep_run: bool) -> tuple[dict, SimResult | None, float]:
    """One search, in a worker process: a policy that cannot run the model is reported, not raised, and
    so is a failure (with its traceback), so that one bug does not lose the other searches."""
    t0 = time.perf_counter()
    try:
        out, run = search(setting, name, start=start, factor=FACTOR)
    except ValueError as e:
        out, run = {"max_rate_at_slo": 0.0, "skipped": str(e)}, None
    except Exception as e:  # noqa: BLE001 - reported in the results and printed
        out, run = {"max_rate_at_slo": None, "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()}, None
    return out, run if keep_run else None, time.perf_counter() - t0


class _Inline:
    """An executor that runs each job at once, in this process (one worker)."""

    def submit(self, fn, *args) -> Future:
        f = Future()
        f.set_result(fn(*args))
        return f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
