"""The serving cluster's loop thread: requests from other threads, per-request streams, aborts,
independent instances during a transformation, failures noticed while idle, a loop hosted off the
main thread."""
import statistics
import threading
import time

import pytest

from gyges.cluster.config import ClusterConfig
from gyges.cluster.serving import ClusterDown, ServeConfig, ServingCluster, TokenEvent
from gyges.engine.admission import RequestError
from gyges.engine.sequence import SamplingParams
from gyges.memory.layout import device_layout
from gyges.model.config import ModelConfig
from tests.conftest import make_tiny_model


class Stream:
    """What one request received: events with their arrival times."""

    def __init__(self):
        self.events: list[tuple[float, TokenEvent]] = []
        self.done = threading.Event()

    def __call__(self, ev: TokenEvent):
        self.events.append((time.monotonic(), ev))
        if ev.finished:
            self.done.set()

    @property
    def tokens(self) -> list[int]:
        return [t for _, ev in self.events for t in ev.token_ids]

    @property
    def final(self) -> TokenEvent:
        return self.events[-1][1]

    def token_times(self) -> list[float]:
        return [t for t, ev in self.events for _ in ev.token_ids]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def prompt(i: int, n: int = 12) -> list[int]:
    return [(i * 31 + j * 7) % 500 + 3 for j in range(n)]


@pytest.fixture
def serving_factory(tiny_llama):
    servings = []

    def make(devices=2, policy="static", device_memory="32MiB", model=None, **kw):
        cfg = ClusterConfig(model=str(model or tiny_llama), devices=devices, tp=1, dtype="float32", device_memory=device_memory,
                            block_tokens=4, **kw)
        e = ServingCluster(cfg, ServeConfig(policy=policy))
        servings.append(e)
        return e

    yield make
    for e in servings:
        e.shutdown(timeout=5)


def test_requests_from_threads_stream_their_own_tokens_and_match_lockstep(serving_factory, tiny_llama):
    from gyges.cluster.cluster import Cluster
    with Cluster(ClusterConfig(model=str(tiny_llama), dtype="float32", device_memory="32MiB", block_tokens=4)) as c:
        expected = [o.token_ids for o in c.generate([prompt(i) for i in range(6)], greedy(10))]
    serving = serving_factory(devices=2)
    streams = [Stream() for _ in range(6)]
    threads = [threading.Thread(target=serving.submit, args=(prompt(i), greedy(10), streams[i])) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in streams:
        assert s.done.wait(60)
    assert [s.tokens for s in streams] == expected
    assert all(s.final.finish_reason == "length" and s.final.error is None for s in streams)
    assert serving.stats().generation_tokens == 60


def test_abort_ends_one_request_and_the_others_finish(serving_factory):
    serving = serving_factory(devices=1)
    long, short = Stream(), Stream()
    rid = serving.submit(prompt(1), greedy(400), long)
    serving.submit(prompt(2), greedy(20), short)
    while len(long.tokens) < 3:
        time.sleep(0.01)
    serving.abort(rid)
    assert long.done.wait(30) and short.done.wait(30)
    assert long.final.finish_reason == "abort" and len(long.tokens) < 400
    assert short.final.finish_reason == "length" and len(short.tokens) == 20
    info = serving.cluster_info()
    assert info["instances"][0]["kv_free_tokens"] == info["instances"][0]["kv_capacity_tokens"]  # pages back


def small_memory(model, max_tp: int, blocks: int) -> int:
    """Device memory for `blocks` KV blocks of 4 tokens at TP1 (after the weights)."""
    lay = device_layout(ModelConfig.from_hf(model), max_tp, 4, 4, 1 << 30)
    return (lay.min_pages(1) + max_tp * blocks) * lay.page_bytes


def test_bad_requests_are_refused_at_once(serving_factory, tiny_llama):
    serving = serving_factory(devices=1, device_memory=small_memory(tiny_llama, 1, 60))
    with pytest.raises(RequestError, match="maximum context length is 1024"):
        serving.submit(prompt(1, 1000), greedy(100), Stream())
    with pytest.raises(RequestError, match="empty"):
        serving.submit([], greedy(1), Stream())
    with pytest.raises(RequestError, match=r"\[0, 512\)"):
        serving.submit([600], greedy(1), Stream())
    cap, why = serving.controller.kv_limit
    assert why == "the largest instance of this layout (TP1)"
    with pytest.raises(RequestError, match=f"holds {cap}"):
        serving.submit(prompt(1, cap - 10), greedy(20), Stream())


def test_no_max_tokens_plans_with_the_output_estimate(serving_factory):
    serving = serving_factory(devices=1)
    s = Stream()
    params = SamplingParams(max_tokens=None, temperature=0, ignore_eos=True)
    rid = serving.submit(prompt(3), params, s)
    assert params.max_tokens is None  # the caller's parameters are its own
    seq = serving.ask(lambda: next(q for i in serving.controller.instances for q in i.scheduler.requests if q.id == rid))
    assert seq.max_tokens == serving.max_model_len - 12  # as long as the context allows
    assert seq.need_tokens == 12 + min(1024, seq.max_tokens)  # KV planned at the output estimate
    while len(s.tokens) < 5:
        time.sleep(0.01)
    serving.abort(s.events[0][1].request_id)
    assert s.done.wait(30)


@pytest.fixture(scope="module")
def long_tiny_llama(tmp_path_factory):
    """The tiny Llama with an 8K context, so that requests can outlast a few seconds of steps."""
    return make_tiny_model(tmp_path_factory.mktemp("long-tiny-llama"), "llama", max_position_embeddings=8192)


def test_other_instances_keep_their_pace_while_two_devices_merge(serving_factory, long_tiny_llama):
    """Device 2 keeps stepping while 0 and 1 merge and split back: its median gap between tokens
    while the transformations run stays within 1.5x of its median in the moments before them.
    Three merge/split cycles are pooled, so the median rests on dozens of gaps rather than the
    handful one 100 ms merge covers; the requests are long enough to outlive them on a slow machine
    (they are aborted at the end), and only the transformations they outlived count. Device 3 idles,
    so that three busy workers share the two cores rather than four. The plans are made in the loop's
    thread, so they cost what they move, not what is free (tens of thousands of pages per device here)."""
    serving = serving_factory(devices=4, max_tp=4, threads_per_device=1, model=long_tiny_llama)
    streams = [Stream() for _ in range(8)]
    for i, s in enumerate(streams):
        serving.submit(prompt(i, 500), greedy(4000), s)
    time.sleep(1.5)
    placed = {d: [] for d in range(4)}
    for inst in serving.cluster_info()["instances"]:
        placed[inst["devices"][0]] = inst["running"]
    assert all(placed[d] for d in range(4)), placed  # every instance busy, so the load stays the same
    for i in _requests_on(serving, [3]):  # device 3 idles: three busy workers on two cores, not four
        serving.abort(streams[i].events[0][1].request_id)
    others = _requests_on(serving, [2])
    spans = []
    for _ in range(3):
        for transform in (lambda: serving.merge([0, 1]), lambda: serving.split(0)):
            time.sleep(0.4)
            t0 = time.monotonic()
            transform()
            spans.append((t0, time.monotonic()))
    time.sleep(0.1)
    for i in others:
        serving.abort(streams[i].events[0][1].request_id)
    before, during, outlived = [], [], set()
    for s in (streams[i] for i in others):
        times = s.token_times()
        for k, (t0, t1) in enumerate(spans):
            if times[-1] <= t1:
                continue
            outlived.add(k)
            for a, b in zip(times, times[1:]):
                if t0 - 0.3 <= a and b < t0:
                    before.append(b - a)
                elif b >= t0 and a <= t1:
                    during.append(b - a)
    ratio = statistics.median(during) / statistics.median(before)
    took = ", ".join(f"{1e3 * (t1 - t0):.0f}" for t0, t1 in spans)
    print(f"transformations took {took} ms; device 2's requests outlived {len(outlived)} of them; median gap "
          f"during/before: {ratio:.2f} ({len(during)} gaps during, {len(before)} before)")
    assert len(outlived) >= 4, "device 2's requests ended before two merge/split cycles were done"
    assert len(during) >= 12
    assert ratio <= 1.5


def _requests_on(serving, devices) -> list[int]:
    """Indices (in submission order) of the requests running on instances of `devices`."""
    c = serving.controller
    ids = serving.ask(lambda: sorted(s.id for i in c.instances if i.devices[0] in devices
                                    for s in i.scheduler.running))
    first = serving.ask(lambda: min(s.id for i in c.instances for s in i.scheduler.requests))
    return [sid - first for sid in ids]


def test_a_dead_idle_worker_is_noticed_within_a_second_and_the_cluster_recovers(serving_factory):
    serving = serving_factory(devices=2)
    assert serving.healthy
    serving.cluster.workers[1].proc.kill()
    t0 = time.monotonic()
    while serving.healthy:
        assert time.monotonic() - t0 < 1.5, "a dead idle worker went unnoticed"
        time.sleep(0.02)
    deadline = time.monotonic() + 60
    while not serving.healthy:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    s = Stream()
    serving.submit(prompt(5), greedy(5), s)
    assert s.done.wait(30) and len(s.tokens) == 5
    assert "exited" in serving.cluster_info()["failures"][0]


def test_shutdown_ends_unfinished_requests_with_an_error(serving_factory):
    serving = serving_factory(devices=1)
    s = Stream()
    serving.submit(prompt(1), greedy(1000), s)
    while not s.tokens:
        time.sleep(0.01)
    serving.shutdown(timeout=0.2)
    assert s.done.is_set() and s.final.finish_reason == "error" and "shut down" in s.final.error
    with pytest.raises(ClusterDown):
        serving.submit(prompt(2), greedy(2), Stream())
