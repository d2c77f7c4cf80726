"""The worker's command channel, what it reports about its fast paths, and where it listens."""
import logging
import re
import subprocess

import pytest

from gyges.cluster.cluster import Cluster
from gyges.cluster.config import ClusterConfig
from gyges.kernels import build
from gyges.protocol.commands import Info
from gyges.protocol.answers import WorkerError
from tests.worker.extension import FailNextMove, TestingWorker

TINY = dict(dtype="float32", device_memory="32MiB", block_tokens=4)


def test_only_declared_commands_run(tiny_llama):
    with Cluster(ClusterConfig(model=str(tiny_llama), **TINY)) as c:  # the production worker
        w = c.workers[0]
        with pytest.raises(WorkerError, match="Worker refuses FailNextMove: not a declared command"):
            w.call(FailNextMove())
        with pytest.raises(TypeError, match="Command messages, not str"):
            w.send("invoke")
        assert w.call(Info()).pid == w.proc.pid  # still serving after a refusal


def test_the_executor_runs_the_worker_class_it_is_given(tiny_llama):
    with Cluster(ClusterConfig(model=str(tiny_llama), **TINY), worker_class=TestingWorker) as c:
        assert c.workers[0].call(FailNextMove()) is None  # declared by the subclass: armed, not refused


def test_info_says_which_fast_paths_are_off_and_why_and_the_log_says_it_once(tiny_llama, caplog):
    with caplog.at_level(logging.WARNING, logger="gyges"):
        with Cluster(ClusterConfig(model=str(tiny_llama), devices=2, tp=1, peer_reads=False, **TINY)) as c:
            infos = c.worker_info
    for i in infos:
        assert (i.kernels, i.peer_reads) == (False, False)
        assert i.kernels_reason == "the C kernels are bf16 only, the model runs in float32"
        assert i.peer_reads_reason == "turned off (--no-peer-reads)"
    assert [r.getMessage() for r in caplog.records if r.name == "gyges"] == [
        "C kernels off, PyTorch path: the C kernels are bf16 only, the model runs in float32",
        "peer reads off, moves through gloo: turned off (--no-peer-reads)"]


def test_kernel_build_failures_are_reasons_not_crashes(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    lib, why = build.compile_kernels(blocker / "gyges")
    assert lib is None and why.startswith(f"cannot write the C kernels' cache folder {blocker / 'gyges'}")
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc
    lib, why = build.compile_kernels(tmp_path / "cache")
    assert lib is None and why == "cannot compile the C kernels: gcc not found"


def test_a_cache_folder_that_cannot_be_created_does_not_stop_the_cluster(tiny_llama, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    monkeypatch.setattr(build, "_cpu_has_bf16", lambda: True)  # the controller tries to build (shm all-reduce)
    build._loaded.cache_clear()
    try:
        with Cluster(ClusterConfig(model=str(tiny_llama), devices=2, tp=2, dtype="bfloat16", device_memory="32MiB",
                                   block_tokens=4)) as c:
            assert build.library() is None and "cache folder" in build.unavailable_reason()
            assert not c.worker_info[0].kernels and c.worker_info[0].kernels_reason
            assert c.generate([[5, 6, 7]])[0].error is None
    finally:
        build._loaded.cache_clear()


def _listening(pid: int) -> list[str]:
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


def test_workers_listen_on_loopback_only(tiny_llama):
    with Cluster(ClusterConfig(model=str(tiny_llama), devices=2, tp=2, **TINY)) as c:
        addresses = [a for w in c.workers for a in _listening(w.proc.pid)]
    assert addresses, "the rendezvous store and gloo listen somewhere"
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", a) for a in addresses), addresses
