"""Cluster settings: the default thread count follows the cores this process may use."""
import os
import subprocess
import sys

import pytest

from gyges.cluster.config import ClusterConfig, usable_cores


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_threads_per_device_follow_the_cpu_affinity_not_the_host_core_count():
    """Under `taskset -c 0` (or a cgroup cpuset) a worker that takes the host's core count runs
    that many threads on one core."""
    code = ("import os; os.sched_setaffinity(0, {0}); from gyges.cluster.config import ClusterConfig, usable_cores; "
            "print(usable_cores(), ClusterConfig(devices=2).threads_per_device)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1"]
    assert ClusterConfig(devices=1).threads_per_device == usable_cores() == len(os.sched_getaffinity(0))


def test_device_memory_reads_sizes_as_pydantic_does_and_says_how_to_write_one():
    from gyges.cluster.config import parse_bytes
    assert [parse_bytes(x) for x in ("512MiB", "2GiB", "1.5GB", "64 KiB", 4096)] == [512 << 20, 2 << 30, 1_500_000_000,
                                                                                     64 << 10, 4096]
    with pytest.raises(ValueError, match="write it like 512MiB"):
        ClusterConfig(device_memory="lots")
