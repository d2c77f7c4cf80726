"""CUDA workers: each binds its own GPU; the reference comparison and one merge/split there."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from gyges.cluster.cluster import Cluster
from gyges.cluster.config import ClusterConfig
from gyges.engine.sequence import SamplingParams
from tests.reference import check_against_reference

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [100, 200], list(range(3, 23))]
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


def _config(model, devices: int) -> ClusterConfig:
    return ClusterConfig(model=str(model), devices=devices, tp=1, max_tp=devices, dtype="float32",
                         device_type="cuda", device_memory="64MiB", block_tokens=4, max_batched_tokens=32)


def test_cuda_matches_transformers(tiny_llama):
    with Cluster(_config(tiny_llama, 1), record_logits=True) as c:
        outs = c.generate(PROMPTS, GREEDY)
    check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), outs)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="a merge needs two GPUs (one per device)")
def test_cuda_merge_and_split_while_decoding(tiny_llama):
    with Cluster(_config(tiny_llama, 2), record_logits=True) as c:
        seqs = [c.add_request(p, GREEDY) for p in PROMPTS]
        for _ in range(3):
            c.step()
        c.merge([0, 1])
        for _ in range(3):
            c.step()
        c.split(0)
        while c.has_work:
            c.step()
        outs = [c.output(s) for s in seqs]
    assert [len(o.token_ids) for o in outs] == [12] * len(PROMPTS)
    check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), outs)
