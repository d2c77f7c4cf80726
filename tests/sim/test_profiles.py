"""The cost model on the GPU profiles against numbers worked out by hand from the configs."""
import pytest

from gyges.policy.cost_model import StepLoad
from gyges.sim.profiles import GIB, gpu, model
from gyges.sim.run import Setup


def test_qwen32b_tp4_shard_is_the_papers_naive_extra_memory():
    # per layer: qkv (40+16)*128 x 5120 + bias 7168, o 5120 x 5120, gate/up/down 3 x 27648 x 5120
    per_layer = 7168 * 5120 + 7168 + 5120 * 5120 + 3 * 27648 * 5120
    c = Setup(model("qwen2.5-32b"), gpu("h100")).cost()
    assert c.model.sharded_params == 64 * per_layer
    assert c.model.sharded_params / 4 * 2 / 1e9 == pytest.approx(15.60, abs=0.01)  # paper: 15.58 GB


def test_llama8b_decode_step_on_h100():
    # one decode at context 1000, TP1: weights + head read, KV read, FLOPs, 3 ms overhead
    per_layer = 6144 * 4096 + 4096 * 4096 + 3 * 14336 * 4096
    sharded, head = 32 * per_layer, 128256 * 4096
    kv_per_token = 32 * 2 * 8 * 128 * 2
    read = (sharded + head) * 2 + 1000 * kv_per_token
    flops = 2 * sharded + 2 * head + 1000 * 4 * 32 * 32 * 128
    expect = read / (3.35e12 * 0.8) + flops / (989e12 * 0.6) + 3e-3
    c = Setup(model("llama-3.1-8b"), gpu("h100")).cost()
    assert c.step_time(1, StepLoad.of(decode_lens=[1000])) == pytest.approx(expect, rel=1e-12)


def test_llama70b_needs_two_h100s_and_kv_capacity():
    c = Setup(model("llama-3.1-70b"), gpu("h100")).cost()
    mem = int(81559 * 2 ** 20 * 0.9)
    assert c.kv_capacity_tokens(1) == 0
    per_device = mem - c.model.weight_bytes(2)
    assert c.kv_capacity_tokens(2, 16) == per_device * 2 // (80 * 2 * 8 * 128 * 2) // 16 * 16
    assert c.model.weight_bytes(1) / GIB > 130
