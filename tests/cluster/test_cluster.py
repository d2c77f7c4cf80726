"""The controller end to end: preemption, sampling, stops, and clear errors with nothing left running."""
import json
import multiprocessing as mp

import pytest
import torch
from transformers import AutoModelForCausalLM

from gyges.cluster.cluster import Cluster
from gyges.cluster.config import ClusterConfig
from gyges.engine.admission import RequestError
from gyges.engine.sequence import SamplingParams
from gyges.memory.layout import device_layout
from gyges.model.config import ModelConfig, ModelError
from gyges.protocol.answers import WorkerError
from tests.reference import check_against_reference


def no_workers_left():
    return not [p for p in mp.active_children() if p.name.startswith("gyges-worker")]


def test_preemption_under_kv_pressure_still_completes_every_request_correctly(tiny_llama):
    lay = device_layout(ModelConfig.from_hf(tiny_llama), 1, 4, 4, 1 << 30)
    memory = (lay.min_pages(1) + 24) * lay.page_bytes  # 24 blocks of 4 tokens for 5 requests of ~30
    prompts = [[(i * 7 + j * 3) % 500 + 3 for j in range(18 + i)] for i in range(5)]
    cfg = ClusterConfig(model=str(tiny_llama), dtype="float32", device_memory=memory, block_tokens=4)
    with Cluster(cfg, record_logits=True) as cluster:
        seqs = [cluster.add_request(p, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)) for p in prompts]
        while cluster.has_work:
            cluster.step()
        outs = [cluster.output(s) for s in seqs]
    assert sum(s.num_preemptions for s in seqs) > 0, "the test must actually preempt"
    assert all(len(o.token_ids) == 12 and o.finish_reason == "length" for o in outs)
    check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), outs)
    assert no_workers_left()


def test_seeded_sampling_is_reproducible_across_tp_degrees(tiny_llama):
    params = SamplingParams(max_tokens=12, temperature=0.8, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    prompts = [[5, 6, 7], list(range(3, 40))]
    runs = []
    for devices, tp in [(1, 1), (2, 2)]:
        with Cluster(ClusterConfig(model=str(tiny_llama), devices=devices, tp=tp, dtype="float32",
                                   device_memory="32MiB", block_tokens=4)) as c:
            runs.append([o.token_ids for o in c.generate(prompts, params)])
    assert runs[0] == runs[1]


def test_stop_strings_eos_and_streaming(tiny_llama):
    with Cluster(ClusterConfig(model=str(tiny_llama), dtype="float32", device_memory="32MiB")) as c:
        free = c.generate([[5, 6, 7]], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0]
        words = free.text.split()
        stop = words[3]
        streamed = []
        params = SamplingParams(max_tokens=10, temperature=0, stop=[stop], ignore_eos=True)
        out = c.generate([[5, 6, 7]], params, on_token=lambda s, t: streamed.append(t))[0]
        assert out.finish_reason == "stop" and stop not in out.text and out.text.strip() == " ".join(words[:3])
        assert streamed == out.token_ids == free.token_ids[:4]  # up to the token that completed the stop string
        seq = c.add_request([5, 6, 7], params)  # lockstep: the match aborts it before another step runs
        while not seq.finished:
            c.step()
        assert seq.output_ids == c.output(seq).token_ids == free.token_ids[:4] and c.output(seq).finish_reason == "stop"
        eos = c.generate([[5, 6, 7]], SamplingParams(max_tokens=10, temperature=0, stop_token_ids=[free.token_ids[2]]))[0]
        assert eos.token_ids == free.token_ids[:3] and eos.finish_reason == "stop"


def test_bad_input_gives_clear_errors_and_leaves_no_workers(tiny_llama, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Cluster(ClusterConfig(model=str(tmp_path / "nope")))
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    (gpt2 / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="not supported"):
        Cluster(ClusterConfig(model=str(gpt2)))
    with pytest.raises(ValueError, match="does not fit 2 device"):
        ClusterConfig(model=str(tiny_llama), devices=2, tp=4)
    with pytest.raises(ModelError, match="needs at least"):
        Cluster(ClusterConfig(model=str(tiny_llama), device_memory="64KiB"))
    with Cluster(ClusterConfig(model=str(tiny_llama), dtype="float32", device_memory="32MiB")) as c:
        with pytest.raises(RequestError, match="maximum context length is 1024 tokens"):
            c.add_request([5] * 1000, SamplingParams(max_tokens=100))
        with pytest.raises(RequestError, match="max_tokens must be at least 1"):
            c.add_request([5, 6], SamplingParams(max_tokens=0))
        assert c.generate([[5, 6]], SamplingParams(max_tokens=2))[0].error is None  # still serving
    assert no_workers_left()


def test_a_worker_that_fails_to_load_is_reported_and_nothing_is_left(tiny_llama, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_llama / "config.json").read_text())
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (broken / f).write_text((tiny_llama / f).read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    # both workers read the broken file; whichever answers first is reported, with the reason
    with pytest.raises(WorkerError, match=r"worker [01] failed:(.|\n)*deserializing header"):
        Cluster(ClusterConfig(model=str(broken), devices=2, tp=2, dtype="float32", device_memory="32MiB"))
    assert no_workers_left()


def test_a_worker_dying_mid_serving_restarts_workers_and_every_request_completes(tiny_llama):
    prompts = [[5, 6, 7], list(range(3, 30)), [9, 8, 7, 6]]
    params = SamplingParams(max_tokens=20, temperature=0.7, seed=5, ignore_eos=True)
    cfg = ClusterConfig(model=str(tiny_llama), devices=2, tp=1, dtype="float32", device_memory="32MiB")
    with Cluster(cfg) as c:
        expected = [o.token_ids for o in c.generate(prompts, params)]
        seqs = [c.add_request(p, params) for p in prompts]
        for _ in range(3):
            c.step()
        c.workers[1].proc.kill()
        while c.has_work:
            c.step()
        assert len(c.failures) == 1 and "worker 1" in c.failures[0]
    assert [s.output_ids for s in seqs] == expected  # re-queued with their tokens, seeded draws resume
    assert all(s.finish_reason == "length" and s.num_preemptions == 0 for s in seqs)
    assert no_workers_left()


def test_a_model_that_fits_only_at_tp2_serves_correctly_at_tp4(tiny_llama):
    """Each device has room for half the sharded weights: every slab must sit inside its memory, and a
    TP4 instance's ranks are ordered as a merge of two TP2 ones would order them (the workers agree)."""
    lay = device_layout(ModelConfig.from_hf(tiny_llama), 4, 4, 4, 1 << 30)
    kv = min(64, lay.slab_pages - 1)
    memory = (lay.replicated_pages + 2 * lay.slab_pages + kv) * lay.page_bytes
    small = dict(model=str(tiny_llama), devices=4, max_tp=4, dtype="float32", device_memory=memory, block_tokens=4)
    with pytest.raises(ModelError, match="at TP 1"):
        Cluster(ClusterConfig(tp=1, **small))
    prompts = [[(i * 5 + j * 11) % 500 + 3 for j in range(9 + 3 * i)] for i in range(3)]
    with Cluster(ClusterConfig(tp=4, **small), record_logits=True) as cluster:
        assert [i.devices for i in cluster.instances] == [[0, 2, 1, 3]]
        seqs = [cluster.add_request(p, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)) for p in prompts]
        for step in range(1, 100):
            if not cluster.has_work:
                break
            cluster.step()
            if step == 3:
                cluster.split(0)  # each device fetches the slab it lacks into the slot it left free
                assert [i.devices for i in cluster.instances] == [[0, 1], [2, 3]]
            if step == 7:
                cluster.merge([0, 1, 2, 3])
        outs = [cluster.output(s) for s in seqs]
    assert all(len(o.token_ids) == 12 for o in outs)
    check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), outs)
    assert no_workers_left()
