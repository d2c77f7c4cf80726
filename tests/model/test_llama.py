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

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
# mixed lengths; the 70-token prompt is longer than one 32-token prefill chunk
TINY_PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [(i * 37) % 500 + 3 for i in range(70)], [100, 200], list(range(3, 23))]


def run(model, devices, tp, prompts, **kw):
    cfg = ClusterConfig(model=str(model) if model else None, devices=devices, tp=tp, dtype="float32", **kw)
    with Cluster(cfg, record_logits=True) as cluster:
        return cluster.generate(prompts, GREEDY), cluster


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_tiny_llama_matches_transformers(tiny_llama, tp):
    outs, _ = run(tiny_llama, tp, tp, TINY_PROMPTS, device_memory="32MiB", block_tokens=4, max_batched_tokens=32)
    worst = check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), outs)
    print(f"tiny llama TP{tp}: max relative logit error {worst:.2e} (tolerance {TOLERANCE})")


@pytest.mark.parametrize("tp", [1, 2])
def test_tiny_qwen2_with_biases_matches_transformers(tiny_qwen2, tp):
    outs, _ = run(tiny_qwen2, tp, tp, TINY_PROMPTS, device_memory="32MiB", block_tokens=4, max_batched_tokens=32)
    worst = check_against_reference(AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32), outs)
    print(f"tiny qwen2 TP{tp}: max relative logit error {worst:.2e}")


@pytest.fixture(scope="module")
def smollm2_reference():
    path = default_model_path()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_smollm2_padded_matches_transformers(smollm2_reference, tp):
    """SmolLM2 has 9 query / 3 KV heads: padded to 12 / 4 it runs at TP 1, 2 and 4."""
    prompts = ["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
               "Write a poem about the sea, the sky and the birds that fly between them. " * 3, "Hello"]
    outs, cluster = run(None, 4, tp, prompts, max_tp=4, device_memory="768MiB", max_batched_tokens=48)
    assert cluster.layout.padding.num_heads == 12 and cluster.layout.padding.num_kv_heads == 4
    assert max(len(o.prompt_ids) for o in outs) > 48
    worst = check_against_reference(smollm2_reference, outs)
    print(f"SmolLM2 TP{tp}: max relative logit error {worst:.2e}")


@pytest.mark.parametrize("tp", [2, 4])
def test_tiny_llama_with_padded_kv_heads_matches_transformers(tmp_path, tp):
    """6 query / 3 KV heads padded to 8 / 4: zero heads change nothing."""
    path = make_tiny_model(tmp_path, "llama", heads=6, kv_heads=3, hidden_size=48)
    outs, cluster = run(path, 4, tp, TINY_PROMPTS, device_memory="32MiB", block_tokens=4, max_batched_tokens=32)
    assert cluster.layout.padding.num_kv_heads == 4
    worst = check_against_reference(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), outs)
    print(f"tiny padded llama TP{tp}: max relative logit error {worst:.2e}")


def _kernels_in_use(worker) -> tuple[bool, bool, bool]:
    return worker.arena.packed, worker.model.decode_kernel, worker.model.fused


BF16_TOLERANCE = 2e-2  # bf16 keeps 8 significant bits; both bf16 paths measure about 1e-2 here


@pytest.mark.skipif(library() is None, reason="needs gcc and a CPU with AVX512-BF16")
@pytest.mark.parametrize("devices, tp, max_tp, vocab", [(1, 1, 1, 512), (2, 1, 2, 512), (2, 2, 2, 512), (1, 1, 1, 504)])
def test_bf16_cpu_kernels_match_transformers(tmp_path, devices, tp, max_tp, vocab):
    """Packed matmuls and the paged decode kernel against fp32 transformers, and no worse than the
    PyTorch bf16 path: head_dim 32 so the decode kernel runs; max_tp 2 at TP1 packs two shards. A
    vocabulary of 504 rows cannot be packed (16-row tiles): the matmuls stay in PyTorch, the
    decode and fused kernels still run."""
    path = make_tiny_model(tmp_path, "llama", heads=4, kv_heads=2, hidden_size=128, intermediate_size=352,
                           vocab_size=vocab)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    worst = {}
    for kernels in (True, False):
        cfg = ClusterConfig(model=str(path), devices=devices, tp=tp, max_tp=max_tp, dtype="bfloat16",
                            device_memory="32MiB", block_tokens=4, max_batched_tokens=32, cpu_kernels=kernels)
        with Cluster(cfg, record_logits=True) as cluster:
            expect = (kernels and vocab % 16 == 0, kernels, kernels)
            assert cluster.workers[0].call("invoke", _kernels_in_use) == expect
            outs = cluster.generate(TINY_PROMPTS, GREEDY)
        worst[kernels] = check_against_reference(ref, outs, BF16_TOLERANCE)
    print(f"bf16 TP{tp} of max {max_tp}, vocabulary {vocab}: kernels {worst[True]:.2e}, PyTorch {worst[False]:.2e}")
    assert worst[True] <= 1.25 * worst[False]
