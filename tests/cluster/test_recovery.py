"""After a worker failure the cluster restarts in the layout that was running, and gives up only
after more than MAX_FAILURES within the window."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from gyges.cluster.cluster import Cluster
from gyges.cluster.config import ClusterConfig
from gyges.cluster.controller import Controller, ControllerConfig
from gyges.cluster.recovery import MAX_FAILURES
from gyges.engine.sequence import SamplingParams, Sequence
from gyges.memory.layout import device_layout
from gyges.model.config import ModelConfig
from gyges.policy.policy import StaticPolicy
from gyges.protocol.answers import WorkerError
from gyges.transform.plan import TransformError
from tests.reference import check_against_reference
from tests.worker.extension import FailNextMove, TestingWorker


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def reference(model):
    return AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)


def test_a_crash_after_a_merge_restarts_in_the_merged_layout_and_the_long_request_finishes(tiny_llama):
    lay = device_layout(ModelConfig.from_hf(tiny_llama), 4, 4, 4, 1 << 30)
    memory = (lay.min_pages(1) + 4 * 40) * lay.page_bytes  # TP1: 40 blocks of 4 tokens
    cfg = ClusterConfig(model=str(tiny_llama), devices=4, tp=1, max_tp=4, dtype="float32", device_memory=memory,
                        block_tokens=4)
    with Cluster(cfg, record_logits=True) as c:
        c.merge([0, 1])
        long = c.add_request([(j * 11) % 500 + 3 for j in range(45 * 4)], greedy(12))  # 45 blocks: TP2 only
        short = c.add_request([7, 8, 9], greedy(12))
        assert not long.error and long in c.instance_of(0).scheduler.requests
        for _ in range(3):
            c.step()
        c.workers[3].proc.kill()  # a worker the long request does not use
        c.workers[3].proc.join(10)
        while c.has_work:
            c.step()
        assert [i.devices for i in c.instances] == [[0, 1], [2], [3]]
        assert "exited" in c.failures[0]
        outs = [c.output(s) for s in (long, short)]
    assert all(o.error is None and len(o.token_ids) == 12 for o in outs)
    check_against_reference(reference(tiny_llama), outs)


PROMPTS = [[(i * 13 + j * 7) % 500 + 3 for j in range(20 + i * 9)] for i in range(6)]


def test_a_crash_during_precopy_requeues_and_everything_completes(tiny_llama):
    cfg = ClusterConfig(model=str(tiny_llama), devices=2, tp=1, max_tp=2, dtype="float32", device_memory="32MiB",
                        block_tokens=4)
    with Cluster(cfg, record_logits=True, worker_class=TestingWorker) as c:
        seqs = [c.add_request(p, greedy(16)) for p in PROMPTS]
        for _ in range(3):
            c.step()
        tr = c.merge([0, 1], precopy=True)
        assert not tr.done
        c.workers[1].call(FailNextMove())
        while c.has_work:
            c.step()
        assert "injected fault" in c.failures[0] and [i.devices for i in c.instances] == [[0], [1]]
        outs = [c.output(s) for s in seqs]
    assert all(o.error is None and len(o.token_ids) == 16 for o in outs)
    check_against_reference(reference(tiny_llama), outs)


def test_a_crash_during_a_split_keeps_the_merged_instance(tiny_llama):
    cfg = ClusterConfig(model=str(tiny_llama), devices=2, tp=2, max_tp=2, dtype="float32", device_memory="32MiB",
                        block_tokens=4)
    with Cluster(cfg, record_logits=True, worker_class=TestingWorker) as c:
        seqs = [c.add_request(p, greedy(16)) for p in PROMPTS]
        for _ in range(3):
            c.step()
        c.workers[0].call(FailNextMove())
        with pytest.raises(TransformError, match="re-queued"):
            c.split(0)
        assert [i.devices for i in c.instances] == [[0, 1]]
        while c.has_work:
            c.step()
        outs = [c.output(s) for s in seqs]
    assert all(o.error is None and len(o.token_ids) == 16 for o in outs)
    check_against_reference(reference(tiny_llama), outs)


class DyingBackend:
    """A backend whose workers die at the first wait: counts restarts, no processes."""

    def __init__(self):
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wake(self):
        pass

    def check_alive(self):
        pass

    def launch_step(self, key, devices, batch, steps=1):
        pass

    def cut(self, devices):
        pass

    def wait(self, until):
        self.t += 1.0
        raise WorkerError("worker 0 exited with code -9")


def test_gives_up_after_more_than_max_failures_within_the_window(tiny_llama):
    lay = device_layout(ModelConfig.from_hf(tiny_llama), 1, 4, 4, 32 << 20)
    restarts, ended = [], []
    ctl = Controller(DyingBackend(), lay, ControllerConfig(1, 4, 8, 64), StaticPolicy(), {2}, [1],
                     lambda seq, toks, lp, logits: ended.append(seq) if seq.finished else None,
                     restart=lambda sizes: restarts.append(sizes) or DyingBackend())
    seq = Sequence([5, 6, 7], greedy(4))
    ctl.submit(seq)
    for _ in range(MAX_FAILURES):
        ctl.run_once()
    assert restarts == [[1]] * MAX_FAILURES and ctl.down is None and not seq.finished
    with pytest.raises(WorkerError, match="gave up"):
        ctl.run_once()
    assert ctl.down and ended == [seq] and seq.finish_reason == "error" and "gave up" in seq.error
    assert len(ctl.recovery.failures) == MAX_FAILURES + 1
