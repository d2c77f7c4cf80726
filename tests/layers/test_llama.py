"""Gyges against `transformers` on the same weights, fp32, at every TP degree (the tolerance rule
is in tests/reference.py)."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from gyges.cluster.cluster import Cluster
from gyges.cluster.config import ClusterConfig
from gyges.engine.sequence import SamplingParams
from gyges.kernels.build import library
from gyges.model.loader import default_model_path
from tests.conftest import make_tiny_model
from tests.reference import TOLERANCE, check_against_reference
from tests.worker.extension import KernelsInUse, TestingWorker

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
# mixed lengths; the 70-token prompt is longer than one 32-token prefill chunk
TINY_PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [(i * 37) % 500 + 3 for i in range(70)], [100, 200], list(range(3, 23))]


def run(model, devices, tp, prompts, **kw):
    cfg = ClusterConfig(model=str(model) if model else None, devices=devices, tp=tp, dtype="float32", **kw)
    with Cluster(cfg, record_logits=True) as cluster:
        return cluster.generate(prompts, GREEDY), cluster


# Query / KV heads; head_dim 32 everywhere so the C decode kernel can take every one in bf16.
# 96 MLP rows per shard at max_tp 4: whole 16-row tiles, so the packed and fused kernels apply
# (352 gives 88, which keeps them off at max_tp 4: first seen on a CPU with AVX512-BF16)
KERNEL_INTERMEDIATE = 384
HEAD_LAYOUTS = {
    "mha": dict(arch="qwen2", tie=True, heads=4, kv_heads=4),  # tied embeddings, q/k/v biases
    "gqa": dict(arch="llama", heads=4, kv_heads=2),
    "mqa": dict(arch="llama", heads=4, kv_heads=1),            # padded to 16 / 4 at max_tp 4
    "padded": dict(arch="llama", heads=6, kv_heads=3),         # 8 / 4 at max_tp 2 and 4
}
# (tp, max_tp): a TP1 instance laid out for max_tp 4 holds 4 head groups, one of them padding
# for "padded"; at max_tp 2 the same model has a half-padded group.
DEGREES = [(1, 4), (2, 4)] + [pytest.param(*d, marks=pytest.mark.slow) for d in [(1, 1), (4, 4), (1, 2), (2, 2)]]


@pytest.fixture(scope="module")
def head_models(tmp_path_factory):
    """kind -> (path, fp32 transformers model), made on first use."""
    made = {}

    def get(kind):
        if kind not in made:
            kw = HEAD_LAYOUTS[kind]
            path = make_tiny_model(tmp_path_factory.mktemp(kind), kw["arch"], tie=kw.get("tie", False),
                                   heads=kw["heads"], kv_heads=kw["kv_heads"], hidden_size=32 * kw["heads"],
                                   intermediate_size=352, num_hidden_layers=2)
            made[kind] = path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return made[kind]
    return get


@pytest.mark.parametrize("tp, max_tp", DEGREES)
@pytest.mark.parametrize("kind", HEAD_LAYOUTS)
def test_head_layouts_match_transformers(head_models, kind, tp, max_tp):
    """MHA, GQA, MQA and padded heads at every degree up to max_tp, fp32: chunked prefills (the
    70-token prompt is three chunks), prefills beside decodes, and decodes."""
    path, ref = head_models(kind)
    outs, cluster = run(path, max_tp, tp, TINY_PROMPTS, max_tp=max_tp, device_memory="32MiB", block_tokens=4,
                        max_batched_tokens=32)
    assert cluster.layout.padding.num_kv_heads % max_tp == 0
    worst = check_against_reference(ref, outs)
    print(f"{kind} TP{tp} of max {max_tp}: max relative logit error {worst:.2e} (tolerance {TOLERANCE})")


@pytest.fixture(scope="module")
def smollm2_reference():
    path = default_model_path()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


def test_smollm2_padded_matches_transformers(smollm2_reference):
    """SmolLM2 has 9 query / 3 KV heads: padded to 12 / 4 it runs at TP 1, 2 and 4 (one cluster, merged
    from 4 x TP1 to 2 x TP2 to TP4 between the runs: one load of the model instead of three)."""
    prompts = ["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
               "Write a poem about the sea, the sky and the birds that fly between them. " * 3, "Hello"]
    cfg = ClusterConfig(devices=4, tp=1, max_tp=4, dtype="float32", device_memory="768MiB", max_batched_tokens=48)
    with Cluster(cfg, record_logits=True) as cluster:
        assert cluster.layout.padding.num_heads == 12 and cluster.layout.padding.num_kv_heads == 4
        for tp, merges in ((1, []), (2, [[0, 1], [2, 3]]), (4, [[0, 1, 2, 3]])):
            for devices in merges:
                cluster.merge(devices)
            assert [i.tp for i in cluster.instances] == [tp] * (4 // tp)
            outs = cluster.generate(prompts, GREEDY)
            assert max(len(o.prompt_ids) for o in outs) > 48
            worst = check_against_reference(smollm2_reference, outs)
            print(f"SmolLM2 TP{tp}: max relative logit error {worst:.2e}")


BF16_TOLERANCE = 2e-2  # bf16 keeps 8 significant bits; both bf16 paths measure about 1e-2 here


FAST_BF16 = [("gqa", 1, 1, 512), ("gqa", 2, 2, 512), ("gqa", 1, 1, 504), ("mha", 1, 4, 512), ("mqa", 2, 4, 512),
             ("padded", 1, 4, 512)]
KERNEL_CASES = FAST_BF16 + [pytest.param(kind, tp, 4, 512, marks=pytest.mark.slow) for kind in HEAD_LAYOUTS
                            for tp in (1, 2, 4) if (kind, tp, 4, 512) not in FAST_BF16]


@pytest.mark.parametrize("kind, tp, max_tp, vocab", KERNEL_CASES)
def test_bf16_matches_transformers(tmp_path, kind, tp, max_tp, vocab):
    """bf16 against fp32 transformers, on the PyTorch path and, on a CPU with AVX512-BF16, with the
    packed matmuls, the paged decode kernel and the fused kernels, which must be no worse. A
    vocabulary of 504 rows cannot be packed (16-row tiles): the matmuls stay in PyTorch, the decode
    and fused kernels still run."""
    kw = HEAD_LAYOUTS[kind]
    path = make_tiny_model(tmp_path, kw["arch"], tie=kw.get("tie", False), heads=kw["heads"], kv_heads=kw["kv_heads"],
                           hidden_size=32 * kw["heads"], intermediate_size=KERNEL_INTERMEDIATE, num_hidden_layers=2,
                           vocab_size=vocab)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    worst = {}
    for kernels in (False, True) if library() is not None else (False,):
        cfg = ClusterConfig(model=str(path), devices=max_tp, tp=tp, max_tp=max_tp, dtype="bfloat16",
                            device_memory="32MiB", block_tokens=4, max_batched_tokens=32, cpu_kernels=kernels)
        with Cluster(cfg, record_logits=True, worker_class=TestingWorker) as cluster:
            expect = (kernels and vocab % 16 == 0, kernels, kernels)
            assert cluster.workers[0].call(KernelsInUse()) == expect
            outs = cluster.generate(TINY_PROMPTS, GREEDY)
        worst[kernels] = check_against_reference(ref, outs, BF16_TOLERANCE)
    print(f"bf16 {kind} TP{tp} of max {max_tp}, vocabulary {vocab}: {worst}")
    if True in worst:
        assert worst[True] <= 1.25 * worst[False]
