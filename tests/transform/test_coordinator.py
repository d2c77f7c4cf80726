"""Merge and split on a live cluster: requests keep decoding and match an untransformed run."""
from collections import deque

import pytest
import torch
from transformers import AutoModelForCausalLM

from gyges.cluster.cluster import Cluster, ServedModel
from gyges.cluster.config import ClusterConfig
from gyges.cluster.serving import ServeConfig, serving_policy
from gyges.engine.admission import RequestError
from gyges.engine.sequence import SamplingParams
from gyges.kernels.build import library, unavailable_reason
from gyges.memory.layout import device_layout
from gyges.model.config import ModelConfig
from gyges.transform.coordinator import FIRST_CHUNK_BYTES, _take, chunk_budget
from gyges.transform.plan import Move, TransformError
from gyges.protocol.commands import Transform
from gyges.worker.handle import recv_all
from tests.reference import check_against_reference
from tests.transform.test_peer_reads import yama_forbids
from tests.conftest import make_tiny_model
from tests.worker.extension import FailNextMove, KernelsInUse, TestingWorker

TINY_PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [100, 200], list(range(3, 23))]
# process overhead a transformation may add outside the arena (gloo's first connection, Python objects)
RSS_SLACK = 1 << 20


@pytest.mark.parametrize("peer_reads", [True, False], ids=["peer-reads", "gloo"])
def test_merge_to_tp2_and_tp4_then_split_back_while_requests_decode(tiny_llama, peer_reads):
    prompts = [[(i * 13 + j * 7) % 500 + 3 for j in range(5 + i * 9)] for i in range(8)]  # 5 to 68 tokens
    cfg = ClusterConfig(model=str(tiny_llama), devices=4, tp=1, max_tp=4, dtype="float32", device_memory="32MiB",
                        block_tokens=4, max_batched_tokens=32, peer_reads=peer_reads)
    schedule = {3: ("merge", [0, 1]), 6: ("merge", [2, 3]), 9: ("merge", [0, 1, 2, 3]),
                13: ("split", 0), 17: ("split", 0), 20: ("split", 2)}
    shapes, peaks = [], [0]
    with Cluster(cfg, record_logits=True) as c:
        assert all(w.peer_reads == (peer_reads and not yama_forbids()) for w in c.worker_info)
        seqs = [c.add_request(p, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)) for p in prompts]
        step = 0
        while c.has_work:
            c.step()
            step += 1
            if step in schedule:
                kind, arg = schedule[step]
                running = sum(len(i.scheduler.running) for i in c.instances)
                report = c.merge(arg) if kind == "merge" else c.split(arg)
                assert sum(len(i.scheduler.running) for i in c.instances) == running  # nobody dropped
                assert report.kv_units_moved > 0
                for d, st in report.worker_stats.items():
                    assert st.peak_extra_bytes is None or st.peak_extra_bytes <= RSS_SLACK, (d, st)
                    peaks.append(st.peak_extra_bytes or 0)
                shapes.append(sorted(i.tp for i in c.instances))
        outs = [c.output(s) for s in seqs]
    assert shapes == [[1, 1, 2], [2, 2], [4], [2, 2], [1, 1, 2], [1, 1, 1, 1]]
    assert all(len(o.token_ids) == 30 for o in outs)
    worst = check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), outs)
    print(f"through merge/split: max relative logit error {worst:.2e}; peak RSS above the arena {max(peaks)} bytes")


def test_a_request_too_long_for_tp1_fits_after_a_merge_in_the_freed_weight_pages(tiny_llama):
    lay = device_layout(ModelConfig.from_hf(tiny_llama), 2, 4, 4, 1 << 30)
    memory = (lay.min_pages(1) + 2 * 60) * lay.page_bytes  # TP1: 60 blocks of 4 tokens, 2 units each
    cfg = ClusterConfig(model=str(tiny_llama), devices=2, tp=1, max_tp=2, dtype="float32", device_memory=memory,
                        block_tokens=4)
    with Cluster(cfg, record_logits=True) as c:
        lay = c.layout
        tp1_blocks = c.instances[0].scheduler.pool.total_blocks
        assert tp1_blocks == 60
        long = [(j * 11) % 500 + 3 for j in range((tp1_blocks + 4) * 4)]
        params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
        with pytest.raises(RequestError, match="holds 240"):  # refused at admission: no instance holds it
            c.add_request(long, params)
        c.merge([0, 1])
        pool = c.instances[0].scheduler.pool
        # each device gave up one of its two slabs: those pages are now KV pages, one unit a block
        assert pool.total_blocks == lay.num_pages - lay.replicated_pages - lay.slab_pages
        assert pool.total_blocks == 2 * 60 + lay.slab_pages
        out = c.generate([long], params)[0]
    assert out.error is None and len(out.token_ids) == 8
    check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), [out])


def test_split_that_cannot_fit_is_refused_and_nothing_changes(tiny_llama):
    lay = device_layout(ModelConfig.from_hf(tiny_llama), 2, 4, 4, 1 << 30)
    memory = (lay.min_pages(1) + 2 * 40) * lay.page_bytes  # at TP2 each device holds one slab less
    cfg = ClusterConfig(model=str(tiny_llama), devices=2, tp=2, dtype="float32", device_memory=memory, block_tokens=4)
    with Cluster(cfg) as c:
        lay = c.layout
        seq = c.add_request([(j * 11) % 500 + 3 for j in range(50 * 4)],  # 50 blocks; TP1 holds 40
                            SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
        c.step()
        pages_before = [list(g) for g in seq.pages]
        with pytest.raises(TransformError, match="split refused"):
            c.split(0)
        assert [i.devices for i in c.instances] == [[0, 1]] and seq.pages == pages_before
        while c.has_work:
            c.step()
        assert len(seq.output_ids) == 4 and lay.max_tp == 2


def test_precopy_moves_full_blocks_while_decoding_and_the_switch_moves_the_rest(tiny_llama):
    prompts = [[(i * 13 + j * 7) % 500 + 3 for j in range(20 + i * 9)] for i in range(8)]
    cfg = ClusterConfig(model=str(tiny_llama), devices=4, tp=1, max_tp=4, dtype="float32", device_memory="32MiB",
                        block_tokens=4, max_batched_tokens=64)
    with Cluster(cfg, record_logits=True) as c:
        seqs = [c.add_request(p, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)) for p in prompts]
        for _ in range(4):
            c.step()
        tr = c.merge([0, 1, 2, 3], precopy=True)
        assert tr.precopy_bytes > 0 and not tr.done
        tokens_before = sum(len(s.output_ids) for s in seqs)
        while c.transition is not None:
            c.step()  # decoding continues during pre-copy
        assert sum(len(s.output_ids) for s in seqs) > tokens_before
        merged = c.reports[-1]
        assert [i.tp for i in c.instances] == [4]
        assert merged.precopy_bytes > 0 and merged.kv_units_moved * c.layout.page_bytes < merged.precopy_bytes
        c.step()
        c.split(0, 4, precopy=True)
        while c.transition is not None:
            c.step()
        split = c.reports[-1]
        assert [i.tp for i in c.instances] == [1, 1, 1, 1] and split.precopy_bytes > split.weight_bytes
        while c.has_work:
            c.step()
        outs = [c.output(s) for s in seqs]
    assert all(len(o.token_ids) == 30 for o in outs)
    check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), outs)


def test_requests_that_arrive_during_a_merge_precopy_ride_along_and_complete_correctly(tiny_llama):
    """With two devices merging, every arrival would wait for the merge; the policy routes it to an
    instance still decoding through the pre-copy instead, and its KV, never pre-copied, moves at the switch."""
    cfg = ClusterConfig(model=str(tiny_llama), devices=2, tp=1, max_tp=2, dtype="float32", device_memory="32MiB",
                        block_tokens=4, max_batched_tokens=64)
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    model = ServedModel.load(cfg)
    with Cluster(cfg, record_logits=True, model=model, policy=serving_policy(ServeConfig(), cfg, model)) as c:
        seqs = [c.add_request(p, params) for p in TINY_PROMPTS]
        for _ in range(3):
            c.step()
        c.merge([0, 1], precopy=True)
        riders = [c.add_request([(i * 17 + j * 5) % 500 + 3 for j in range(11 + 6 * i)], params) for i in range(2)]
        assert not c.controller.held  # routed to the merging instances, not held for the merge
        c.step()
        assert c.transition is not None and all(s.num_computed > 0 for s in riders)  # prefilled before the switch
        while c.transition is not None:
            c.step()
        assert [i.tp for i in c.instances] == [2]
        assert c.reports[-1].kv_units_moved > 0
        while c.has_work:
            c.step()
        outs = [c.output(s) for s in seqs + riders]
    assert all(len(o.token_ids) == 24 for o in outs)
    check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), outs)


def test_a_transformation_failing_part_way_requeues_requests_and_they_complete_correctly(tiny_llama):
    prompts = [[(i * 13 + j * 7) % 500 + 3 for j in range(5 + i * 9)] for i in range(6)]
    cfg = ClusterConfig(model=str(tiny_llama), devices=4, tp=1, max_tp=4, dtype="float32", device_memory="32MiB",
                        block_tokens=4)
    with Cluster(cfg, record_logits=True, worker_class=TestingWorker) as c:
        seqs = [c.add_request(p, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)) for p in prompts]
        for _ in range(4):
            c.step()
        c.workers[2].call(FailNextMove())
        with pytest.raises(TransformError, match="requests re-queued"):
            c.merge([0, 1, 2, 3])
        assert [i.tp for i in c.instances] == [1, 1, 1, 1] and "injected fault" in c.failures[0]
        while c.has_work:
            c.step()
        outs = [c.output(s) for s in seqs]
    assert all(len(o.token_ids) == 20 for o in outs)
    check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), outs)


def test_every_device_takes_the_phase_barrier_even_without_weight_moves_of_its_own(tiny_llama):
    """After a pre-copy, a switch may leave weight slabs to fetch for some devices only; the ones
    with none must still meet the others between the KV and weight phases, or those wait forever."""
    cfg = ClusterConfig(model=str(tiny_llama), devices=4, tp=4, max_tp=4, dtype="float32", device_memory="32MiB",
                        block_tokens=4)
    with Cluster(cfg, record_logits=True) as c:
        slab0 = c.layout.slab_pages_of(0)  # held by device 0; free KV pages on device 1 at TP4, nothing in them
        fetch = (0, Move(0, 1, slab0.start, slab0.start, len(slab0)))
        for d, w in enumerate(c.workers):
            w.send(Transform([], [fetch] if d in (0, 1) else [], 4, d, 0, (0, 4)))
        stats = recv_all(c.workers, timeout=60)
        assert stats[1].weight_bytes_sent == 0 and stats[0].weight_bytes_sent == len(slab0) * c.layout.page_bytes
        outs = c.generate(TINY_PROMPTS, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), outs)


BF16_TOLERANCE = 2e-2  # as against fp32 transformers in tests/model/test_llama.py


@pytest.mark.parametrize("kernels", [False, pytest.param(True, marks=pytest.mark.skipif(
    library() is None, reason=f"C kernels unavailable here: {unavailable_reason()}"))], ids=["pytorch", "kernels"])
def test_bf16_4xtp1_to_tp2_to_tp4_and_back_with_packed_weights(tmp_path, kernels):
    """bf16, where packing and the C kernels apply (head_dim 32, 96 MLP rows per shard at max_tp 4:
    whole 16-row tiles): packed slabs move between devices as raw pages and every request still
    matches fp32 transformers."""
    path = make_tiny_model(tmp_path, "llama", heads=4, kv_heads=4, hidden_size=128, intermediate_size=384,
                           num_hidden_layers=2)
    prompts = [[(i * 13 + j * 7) % 500 + 3 for j in range(5 + i * 9)] for i in range(8)]
    cfg = ClusterConfig(model=str(path), devices=4, tp=1, max_tp=4, dtype="bfloat16", device_memory="32MiB",
                        block_tokens=4, max_batched_tokens=32, cpu_kernels=kernels)
    schedule = {3: ("merge", [0, 1]), 5: ("merge", [2, 3]), 7: ("merge", [0, 1, 2, 3]), 11: ("split", 0),
                15: ("split", 0), 17: ("split", 2)}
    with Cluster(cfg, record_logits=True, worker_class=TestingWorker) as c:
        assert all(w.call(KernelsInUse()) == (kernels, kernels, kernels) for w in c.workers)
        seqs = [c.add_request(p, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)) for p in prompts]
        step, shapes = 0, []
        while c.has_work:
            c.step()
            step += 1
            if step in schedule:
                kind, arg = schedule[step]
                c.merge(arg) if kind == "merge" else c.split(arg)
                shapes.append(sorted(i.tp for i in c.instances))
        outs = [c.output(s) for s in seqs]
    assert shapes == [[1, 1, 2], [2, 2], [4], [2, 2], [1, 1, 2], [1, 1, 1, 1]]
    assert all(o.error is None and len(o.token_ids) == 24 for o in outs)
    worst = check_against_reference(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), outs,
                                     BF16_TOLERANCE)
    print(f"bf16 through merge/split ({'kernels' if kernels else 'pytorch'}): max relative logit error {worst:.2e}")


def test_precopy_chunks_take_a_quarter_step_of_copying_and_split_long_runs():
    assert chunk_budget(0.0, 1e9) == chunk_budget(0.1, 0.0) == FIRST_CHUNK_BYTES
    assert chunk_budget(0.2, 1e9) == 50_000_000          # a CPU: 200 ms steps at 1 GB/s
    assert chunk_budget(0.03, 300e9) == 2_250_000_000    # a GPU: 30 ms steps at 300 GB/s
    todo = deque([Move(0, 1, 10, 20, 5), Move(1, 0, 3, 4)])
    assert _take(todo, 3 * 100, 100) == [Move(0, 1, 10, 20, 3)]
    assert _take(todo, 3 * 100, 100) == [Move(0, 1, 13, 23, 2), Move(1, 0, 3, 4)]
    assert not todo
    todo = deque([Move(0, 1, 0, 0, 2)])
    assert _take(todo, 1, 100) == [Move(0, 1, 0, 0, 1)]  # at least one page


def test_an_instance_that_finishes_first_steps_once_more_when_the_others_need_over_half_its_step():
    from gyges.transform.coordinator import one_more_step
    assert one_more_step(0.2, [0.15])          # waiting would cost 150 ms; stepping makes the other wait 50
    assert not one_more_step(0.2, [0.08])      # waiting costs 80 ms, less than half a step
    assert not one_more_step(0.2, [])          # nobody else in flight: switch now
    assert not one_more_step(0.0, [0.5])       # its step length is not known yet
    assert one_more_step(0.2, [0.05, 0.3])     # the slowest other instance decides
