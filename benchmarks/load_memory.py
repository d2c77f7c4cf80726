"""Host memory a cluster's start-up costs beyond its arenas, at N devices (issue 8 item 8).

Workers read the model lazily (`LazyWeights`: memory-mapped files, one layer at a time), so N
devices should cost about one copy of the model (the file's pages, shared by every mapping) plus
the arenas, not N copies. Measured as the sum of PSS over the controller and every process it
starts (shared pages count once in total, unlike summed RSS), less each arena's resident pages
(every arena is filled at start, so all of it is resident), less the same quantity for a cluster of
the same shape on a tiny model (the runtime: Python, torch, gloo, threads). Two moments: after
start-up, and the peak sampled every `SAMPLE_S` during it (a lower bound of the true peak). The
drop in MemAvailable is reported too; it is system-wide, so other work on the host moves it.

    python benchmarks/load_memory.py            # 4 devices; --devices 2 for a quicker run
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gyges.cluster.cluster import Cluster  # noqa: E402
from gyges.cluster.config import ClusterConfig  # noqa: E402
from gyges.memory.arena import HUGE_PAGE  # noqa: E402
from gyges.memory.layout import device_layout  # noqa: E402
from gyges.model.loader import load_config, resolve_model  # noqa: E402
from gyges.worker.worker import DTYPES  # noqa: E402

SAMPLE_S = 0.05
PAGE = 4096
MiB = 2**20
# ~175 MB of fp32 on disk, 12 thin layers: a layer is small beside the model, as in real models
BIG_LLAMA = dict(hidden_size=512, num_hidden_layers=12, intermediate_size=1408, vocab_size=8192)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc/*/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def pss_and_arena(pid: int, arena_kib: int) -> tuple[int, int]:
    """(PSS of the process, resident bytes of its arena mapping), from /proc/PID/smaps. The arena
    is the anonymous mapping of exactly `arena_kib` (`host_bytes` maps the arena plus 2 MiB)."""
    pss = arena = 0
    size = 0
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "Size":
            size = int(rest.split()[0])
        elif key == "Pss":
            pss += int(rest.split()[0]) * 1024
        elif key == "Rss" and size == arena_kib:
            arena += int(rest.split()[0]) * 1024
    return pss, arena


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


@dataclass
class Sample:
    pss: int  # controller's growth since before start-up plus every started process's PSS
    arenas: int  # resident arena bytes among them

    @property
    def beyond_arenas(self) -> int:
        return self.pss - self.arenas


class Sampler(threading.Thread):
    """Samples the controller and its new descendants every SAMPLE_S until stopped; keeps the
    sample with the most PSS beyond the arenas, and the largest drop in MemAvailable."""

    def __init__(self, arena_kib: int):
        super().__init__(daemon=True)
        self.arena_kib = arena_kib
        self.me = os.getpid()
        self.before_children = set(descendants(self.me))
        self.before_pss, _ = pss_and_arena(self.me, arena_kib)
        self.before_available = mem_available()
        self.peak = Sample(0, 0)
        self.peak_drop = 0
        self.done = threading.Event()

    def sample(self) -> Sample:
        pss, arenas = pss_and_arena(self.me, self.arena_kib)
        pss -= self.before_pss
        for pid in set(descendants(self.me)) - self.before_children:
            p, a = pss_and_arena(pid, self.arena_kib)
            pss, arenas = pss + p, arenas + a
        return Sample(pss, arenas)

    def available_drop(self) -> int:
        return self.before_available - mem_available()

    def run(self):
        while not self.done.wait(SAMPLE_S):
            s = self.sample()
            if s.beyond_arenas > self.peak.beyond_arenas:
                self.peak = s
            self.peak_drop = max(self.peak_drop, self.available_drop())


def model_bytes(model: str | None, dtype: str) -> tuple[int, int]:
    """(bytes on disk, bytes of every weight in `dtype`)."""
    path = resolve_model(model)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    on_disk = sum(f.stat().st_size for f in files)
    if path.suffix == ".gguf":
        from gguf import GGUFReader
        elems = sum(int(t.n_elements) for t in GGUFReader(path).tensors)
    else:
        from safetensors import safe_open
        elems = 0
        for f in files:
            with safe_open(f, framework="pt") as h:
                for name in h.keys():
                    n = 1
                    for d in h.get_slice(name).get_shape():
                        n *= d
                    elems += n
    return on_disk, elems * DTYPES[dtype].itemsize


def start_up(model: str | None, devices: int, device_memory: str, dtype: str = "bfloat16") -> dict:
    """Start a cluster of `devices` TP1 instances on `model`, measure, shut it down."""
    cfg = ClusterConfig(model=model, devices=devices, tp=1, max_tp=devices, device_memory=device_memory, dtype=dtype)
    # the arena's mapping size needs the layout; the Cluster computes the same one
    layout = device_layout(load_config(resolve_model(model)), cfg.max_tp, cfg.block_tokens,
                           DTYPES[dtype].itemsize, cfg.memory_bytes)
    layout_bytes = layout.num_pages * layout.page_bytes
    arena_kib = -(-(layout_bytes + HUGE_PAGE) // PAGE) * PAGE // 1024
    sampler = Sampler(arena_kib)
    t0 = time.monotonic()
    sampler.start()
    try:
        with Cluster(cfg) as cluster:
            seconds = time.monotonic() - t0
            after = sampler.sample()
            drop = sampler.available_drop()
            workers = len(cluster.workers)
    finally:
        sampler.done.set()
        sampler.join()
    # the arena is filled, so all of it is resident; with 2 MiB pages, so may the slack around it be
    if not devices * layout_bytes <= after.arenas <= devices * (layout_bytes + HUGE_PAGE):
        raise RuntimeError(f"found {after.arenas} resident arena bytes, expected {devices} x {layout_bytes}: "
                           f"the arena mappings were not recognised")
    return {"devices": workers, "start_s": seconds, "arena_bytes": layout_bytes, "after": asdict(after),
            "peak": asdict(sampler.peak),
            "available_drop_after": drop, "available_drop_peak": sampler.peak_drop}


def compare(model: str | None, run: dict, base: dict, dtype: str) -> dict:
    """Host memory beyond the arenas that `model` cost in `run` over `base` (the same cluster on a
    tiny model: the runtime's own cost), after start-up and at the sampled peak, in bytes and in
    copies of the model (on disk, and in `dtype`)."""
    on_disk, in_dtype = model_bytes(model, dtype)

    def beyond(r: dict, moment: str) -> int:
        return r[moment]["pss"] - r[moment]["arenas"]

    extra_after = beyond(run, "after") - beyond(base, "after")
    extra_peak = beyond(run, "peak") - beyond(base, "peak")
    return {"model": model or "SmolLM2-135M Q4_1 GGUF (embedded)", "devices": run["devices"], "dtype": dtype,
            "model_bytes_on_disk": on_disk, "model_bytes_in_dtype": in_dtype,
            "arenas_bytes": run["after"]["arenas"], "start_s": run["start_s"],
            "extra_after_bytes": extra_after, "extra_peak_bytes": extra_peak,
            "extra_after_copies_on_disk": extra_after / on_disk, "extra_peak_copies_on_disk": extra_peak / on_disk,
            "extra_after_copies_in_dtype": extra_after / in_dtype, "extra_peak_copies_in_dtype": extra_peak / in_dtype,
            "available_drop_after_bytes": run["available_drop_after"],
            "available_drop_peak_bytes": run["available_drop_peak"],
            "run": run, "baseline": base}


def measure(model: str | None, baseline_model: str, devices: int, device_memory: str,
            dtype: str = "bfloat16") -> dict:
    """`compare` for one model, its baseline started just before it."""
    base = start_up(baseline_model, devices, device_memory, dtype)
    return compare(model, start_up(model, devices, device_memory, dtype), base, dtype)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--device-memory", default="320MiB")
    ap.add_argument("--out", default=str(ROOT / "results" / "load_memory.json"))
    args = ap.parse_args()
    from tests.conftest import make_tiny_model
    tmp = Path(tempfile.mkdtemp(prefix="gyges-load-memory-"))
    tiny = str(make_tiny_model(tmp / "tiny", "llama"))
    big = str(make_tiny_model(tmp / "llama-175mb", "llama", **BIG_LLAMA))
    base = start_up(tiny, args.devices, args.device_memory)
    rows = [compare(m, start_up(m, args.devices, args.device_memory), base, "bfloat16") for m in (big, None)]
    print(f"MiB; extra = PSS beyond the arenas over a tiny model's cluster; x = copies of the model\n"
          f"{'model':<34} {'dev':>3} {'disk':>5} {'bf16':>5} {'arenas':>6} {'after':>5} {'peak':>5} "
          f"{'x disk':>6} {'x bf16':>6} {'MemAvail drop':>13} {'start s':>7}")
    for r in rows:
        print(f"{Path(r['model']).name:<34} {r['devices']:>3} {r['model_bytes_on_disk'] / MiB:>5.0f} "
              f"{r['model_bytes_in_dtype'] / MiB:>5.0f} {r['arenas_bytes'] / MiB:>6.0f} "
              f"{r['extra_after_bytes'] / MiB:>5.0f} {r['extra_peak_bytes'] / MiB:>5.0f} "
              f"{r['extra_peak_copies_on_disk']:>6.2f} {r['extra_peak_copies_in_dtype']:>6.2f} "
              f"{r['available_drop_after_bytes'] / MiB:>13.0f} {r['start_s']:>7.1f}")
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor()
              or platform.machine(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
              "command": "python benchmarks/load_memory.py " + " ".join(sys.argv[1:]), "cases": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
