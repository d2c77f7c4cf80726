"""The plotted series, by hand; and that --compare's plots are written."""
import numpy as np

from gyges.sim.plots import cdf, layout_segments, throughput_series, write_plots
from gyges.sim.run import Outcome, SimResult


def test_cdf():
    xs, ys = cdf([3.0, 1.0, 2.0, 2.0])
    assert xs.tolist() == [1.0, 2.0, 2.0, 3.0] and ys.tolist() == [0.25, 0.5, 0.75, 1.0]


def test_throughput_in_bins():
    t, rate = throughput_series([(0.5, 10), (1.2, 4), (2.9, 6), (3.0, 2)], end_s=3.0, bin_s=1.0)
    assert t.tolist() == [0.0, 1.0, 2.0] and rate.tolist() == [10.0, 4.0, 8.0]  # the end falls in the last bin


def test_layout_segments():
    layouts = [(0.0, [[0], [1]]), (2.0, [[0, 1]]), (5.0, [[0], [1]])]
    assert layout_segments(layouts, 6.0) == [(0, 0.0, 2.0, 1), (1, 0.0, 2.0, 1), (0, 2.0, 3.0, 2), (1, 2.0, 3.0, 2),
                                             (0, 5.0, 1.0, 1), (1, 5.0, 1.0, 1)]


def test_write_plots(tmp_path):
    r = SimResult([Outcome(10, 5, 0.0, 0.2, 1.0)], 6.0, 2, [(0.0, [[0], [1]]), (2.0, [[0, 1]])], [(0.2, 1), (1.0, 4)])
    files = write_plots({"gyges": r, "static-tp1": SimResult(r.outcomes, 6.0, 0, r.layouts[:1], r.tokens)}, tmp_path)
    assert sorted(f.name for f in files) == ["layout_gyges.png", "throughput.png", "ttft_cdf.png"]
    assert all(f.stat().st_size > 1000 for f in files)
    assert np.isfinite(cdf([])[1]).all()
