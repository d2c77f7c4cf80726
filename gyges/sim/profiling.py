"""`gyges simulate --fit`: time whole steps of the real engine (embedded SmolLM2 in the dtype the
server runs on this CPU (bf16 with AVX512-BF16, else fp32), 2 CPU devices, as TP1 x 2 and then
merged into TP2) over a few batch sizes and prompt lengths, fit the
cost model's efficiencies, and write the CPU profile the server's policy loads.

Each run submits `batch` equal requests to every instance and steps the cluster in lockstep
(`Cluster.step`) until they finish: prefill chunks, then decodes. At TP1 both instances carry the
same load on their own core, as when serving, and the step's time is theirs. The first run only
warms up (lazy weight reads, allocator) and is not kept.
"""
import json
import os
import platform
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from gyges.kernels.build import default_cpu_dtype
from gyges.policy.cost_model import CostModel, ModelProfile, StepSample
from gyges.policy.profiles import CPU_NOMINAL, CPU_PROFILE_PATH, profile_dict
from gyges.sim.fit import Measured, Point, errors, fit_profile, held_back, run_name, sample_dict, sample_of, step_load

SWEEP = (Point(1, 16, 8), Point(4, 32, 4), Point(16, 16, 4), Point(1, 256, 4), Point(4, 96, 4), Point(8, 64, 4))
WARMUP = Point(2, 16, 3)
DEVICES = 2


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _run(cluster, tp: int, p: Point, seed: int) -> list[Measured]:
    from gyges.engine.sequence import SamplingParams
    params = SamplingParams(max_tokens=p.output, ignore_eos=True)
    seqs = [cluster.add_request([100 + (seed * 7919 + i * 31 + j) % 20000 for j in range(p.prompt)], params)
            for i in range(DEVICES // tp * p.batch)]
    out = []
    while not all(s.finished for s in seqs):
        where = [[s for s in inst.scheduler.requests] for inst in cluster.instances]
        before = {s.id: s.num_computed for s in seqs}
        t0 = time.perf_counter()
        cluster.step()
        seconds = time.perf_counter() - t0
        loads = {step_load([(len(s.prompt_ids), before[s.id], s.num_computed) for s in group]) for group in where}
        if len(loads) == 1 and (load := loads.pop()).tokens:  # every instance ran the same load
            out.append(Measured(run_name(tp, p), StepSample(tp, load.prefill_tokens, load.decode_tokens,
                                                            load.context_tokens, seconds, load.kv_read_tokens)))
    return out


def sweep(points=SWEEP, device_memory: str = "1GiB") -> tuple[list[Measured], ModelProfile, float]:
    """Measured steps of every point at TP1 and TP2, the model's profile, and an empty merge's time
    (barriers and weight release: the switch overhead with nothing to move)."""
    from gyges.cluster.cluster import Cluster
    from gyges.cluster.config import ClusterConfig
    cfg = ClusterConfig(devices=DEVICES, layout="1,1", max_tp=DEVICES, device_memory=device_memory,
                        dtype=default_cpu_dtype())
    with Cluster(cfg) as c:
        model = ModelProfile.from_config(c.model_config, DEVICES, c.layout.unit.dtype_bytes)
        out, seed = [], 0
        for tp in (1, 2):
            if tp == 2:
                merge_s = c.merge(list(range(DEVICES))).total_s
            _run(c, tp, WARMUP, seed := seed + 1)
            for p in points:
                out += _run(c, tp, p, seed := seed + 1)
                print(f"  {run_name(tp, p)}: {sum(m.sample.seconds for m in out if m.run == run_name(tp, p)):.1f} s",
                      flush=True)
    return out, model, merge_s


def fit_command(args) -> int:
    t0, src = time.perf_counter(), {}
    machine = {"cpu": _cpu_model(), "cores": os.cpu_count(), "loadavg_1m_before": os.getloadavg()[0]}
    if args.fit_from:
        src = json.loads(Path(args.fit_from).read_text())
        measured = [sample_of(d) for d in src["samples"]]
        model = ModelProfile(**src["model_profile"])
        merge_s = src["profile"]["switch_overhead_s"]
    else:
        measured, model, merge_s = sweep()
        machine["loadavg_1m_after"] = os.getloadavg()[0]  # other work on the machine slows steps down
    hold = held_back([m.run for m in measured])
    base = replace(CPU_NOMINAL, name=f"cpu: {_cpu_model()} (fitted)", switch_overhead_s=merge_s)
    hw = fit_profile(measured, model, base, hold)
    cost = CostModel(model, hw)
    report = {
        "profile": profile_dict(hw),
        # where and when the samples were measured (a refit keeps its source's)
        "machine": src.get("machine", machine),
        "date": src.get("date", datetime.now(timezone.utc).isoformat(timespec="seconds")),
        "sweep_s": src.get("sweep_s", time.perf_counter() - t0),
        "engine": src.get("engine", {"model": "embedded SmolLM2-135M-Instruct", "dtype": default_cpu_dtype(),
                                     "devices": DEVICES}),
        "model_profile": asdict(model),
        "held_back_runs": sorted(hold),
        "error_held_back": errors(cost, [m for m in measured if m.run in hold]),
        "error_fitted": errors(cost, [m for m in measured if m.run not in hold]),
        "samples": [sample_dict(m) for m in measured],
    }
    out = Path(args.fit_out or CPU_PROFILE_PATH)
    out.write_text(json.dumps(report, indent=1) + "\n")
    e = report["error_held_back"]
    print(f"fitted {len(measured) - e['steps']} steps, held back {e['steps']} ({', '.join(sorted(hold))}): "
          f"step error median {e['step_median_abs']:.1%} max {e['step_max_abs']:.1%}, "
          f"run error max {e['run_max_abs']:.1%}; wrote {out}")
    return 0
