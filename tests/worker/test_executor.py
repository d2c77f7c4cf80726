"""The executor owns the worker processes; with its controller it runs anywhere a host actor would:
in a thread that is not a program's main thread, in a process that is not the program."""
import multiprocessing as mp
import threading

from gyges.cluster.cluster import Cluster
from gyges.cluster.config import ClusterConfig
from gyges.cluster.serving import ServeConfig, ServingCluster
from gyges.engine.sequence import SamplingParams

PROMPTS = [[5, 6, 7], list(range(3, 30)), [9, 8, 7, 6]]
GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


def config(model: str) -> ClusterConfig:
    return ClusterConfig(model=model, devices=2, tp=1, max_tp=2, dtype="float32", device_memory="32MiB", block_tokens=4)


def serve_in_a_thread(model: str, out):
    """A child process's body: a serving cluster built and driven from a thread of its own."""
    def host():
        try:
            cluster = ServingCluster(config(model), ServeConfig(policy="gyges"))
            try:
                results = []
                for p in PROMPTS:
                    done, tokens = threading.Event(), []

                    def on_event(ev, tokens=tokens, done=done):
                        tokens += ev.token_ids
                        if ev.finished:
                            done.set()
                    cluster.submit(p, GREEDY, on_event)
                    assert done.wait(60)
                    results.append(tokens)
                out.put(results)
            finally:
                cluster.shutdown(timeout=5)
        except BaseException as e:  # reported to the test, not lost in the child
            out.put(f"{type(e).__name__}: {e}")

    thread = threading.Thread(target=host, name="host-actor")
    thread.start()
    thread.join()


def test_a_host_runs_in_a_thread_of_another_process(tiny_llama):
    with Cluster(config(str(tiny_llama))) as c:
        expected = [o.token_ids for o in c.generate(PROMPTS, GREEDY)]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=serve_in_a_thread, args=(str(tiny_llama), out))  # not a daemon: it starts workers
    child.start()
    try:
        got = out.get(timeout=180)
    finally:
        child.join(30)
    assert got == expected
    assert child.exitcode == 0
