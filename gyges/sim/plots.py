"""Plots of simulated runs: TTFT CDFs, output throughput over time, and the layout timeline.

The series are pure functions of a SimResult (tested alone); `write_plots` only draws them.
"""
from pathlib import Path

import numpy as np

from gyges.sim.run import SimResult


def cdf(values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and the fraction of values at or below each."""
    xs = np.sort(np.asarray(values, dtype=float))
    return xs, np.arange(1, len(xs) + 1) / max(len(xs), 1)


def throughput_series(tokens: list[tuple[float, int]], end_s: float, bin_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Output tokens/s in bins of `bin_s` from 0 to `end_s`: bin starts and rates."""
    n = max(1, int(np.ceil(end_s / bin_s)))
    counts = np.zeros(n)
    for t, k in tokens:
        counts[min(n - 1, int(t // bin_s))] += k
    return np.arange(n) * bin_s, counts / bin_s


def layout_segments(layouts: list[tuple[float, list[list[int]]]], end_s: float) -> list[tuple[int, float, float, int]]:
    """(device, start, duration, TP degree of the instance holding it) for every span a layout lasted."""
    out = []
    for (t, insts), nxt in zip(layouts, [t for t, _ in layouts[1:]] + [end_s]):
        out += [(d, t, nxt - t, len(devs)) for devs in insts for d in devs if nxt > t]
    return out


def write_plots(results: dict[str, SimResult], out_dir: str | Path, bin_s: float = 60.0) -> list[Path]:
    """ttft_cdf.png (every policy), throughput.png (every policy), layout_<name>.png (each policy
    whose layout changed); returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        xs, ys = cdf([o.ttft_s for o in r.outcomes if o.ttft_s is not None])
        ax.plot(xs, ys, label=name)
    ax.set(xscale="log", xlabel="TTFT (s)", ylabel="fraction of served requests", title="TTFT CDF")
    ax.legend(fontsize=7)
    files.append(_save(fig, out_dir / "ttft_cdf.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        ax.plot(*throughput_series(r.tokens, r.end_s, bin_s), label=name)
    ax.set(xlabel="time (s)", ylabel="output tokens/s", title=f"throughput ({bin_s:.0f} s bins)")
    ax.legend(fontsize=7)
    files.append(_save(fig, out_dir / "throughput.png"))

    for name, r in results.items():
        if len(r.layouts) < 2:
            continue
        fig, ax = plt.subplots(figsize=(7, 3))
        colors = {1: "tab:blue", 2: "tab:orange", 4: "tab:red", 8: "tab:purple"}
        for d, t, dur, tp in layout_segments(r.layouts, r.end_s):
            ax.broken_barh([(t, dur)], (d - 0.4, 0.8), color=colors.get(tp, "gray"))
        ax.set(xlabel="time (s)", ylabel="device", title=f"{name}: instance TP degree per device "
               "(blue 1, orange 2, red 4, purple 8)")
        files.append(_save(fig, out_dir / f"layout_{name}.png"))
    return files


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path
