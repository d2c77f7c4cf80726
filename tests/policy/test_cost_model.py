import math

import numpy as np
import pytest

from gyges.memory.layout import device_layout
from gyges.model.config import ModelConfig
from gyges.policy.cost_model import (CostModel, HardwareProfile, ModelProfile, ServingLoad, StepLoad, StepSample,
                                     fit)

# 1 layer, hidden 4, 2 query / 2 KV heads of 2, MLP 4, vocab 8, 1-byte weights: every count below is by hand.
TINY = ModelProfile(layers=1, hidden=4, heads=2, kv_heads=2, head_dim=2, intermediate=4, vocab=8, dtype_bytes=1,
                    max_tp=2, padded_heads=2, padded_kv_heads=2, padded_intermediate=4)
TINY_HW = HardwareProfile("tiny", mem_bandwidth=128, peak_flops=304, link_bandwidth=12, link_latency=0.5,
                          memory_bytes=200, mem_efficiency=0.5, transfer_efficiency=0.5, step_overhead_s=0.25,
                          switch_overhead_s=1.0)


def smol(max_tp: int = 4) -> ModelConfig:
    return ModelConfig(arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                       num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=1e5,
                       max_position_embeddings=8192, tie_word_embeddings=True)


def test_tiny_sizes_by_hand():
    # qkv 6 rows * 2 * 4 = 48, o 4 * 4 = 16, gate/up/down 3 * 4 * 4 = 48
    assert TINY.sharded_params == 112
    assert TINY.replicated_params == 8 * 4 + 3 * 4
    assert TINY.weight_bytes(1) == 156 and TINY.weight_bytes(2) == 44 + 56
    assert TINY.kv_bytes_per_token == 1 * 2 * 2 * 2


def test_step_time_by_hand():
    # read: shard 56 + head 32 + KV 10 pairs * 8 / 2 = 128 B at 64 B/s -> 2 s
    # FLOPs: 2*3*112/2 + 2*3*32 + 10 * 4*2*2/2 = 608 at 304 -> 2 s
    # all-reduce: 2 per layer, ring 2*(1/2) * 3 tokens * 4 B = 12 each -> 24 B at 12 B/s = 2 s, latency 2 * 0.5 = 1 s
    cost = CostModel(TINY, TINY_HW)
    assert cost.step_time(2, StepLoad(decode_tokens=3, context_tokens=10)) == pytest.approx(2 + 2 + 2 + 1 + 0.25)
    # TP1: no all-reduce; read 112 + 32 + 80 = 224 B -> 3.5 s; FLOPs 672 + 192 + 160 = 1024 -> 1024/304 s
    assert cost.step_time(1, StepLoad(decode_tokens=3, context_tokens=10)) == pytest.approx(3.5 + 1024 / 304 + 0.25)
    assert cost.step_time(1, StepLoad()) == 0.0


def test_step_load_of_counts_attention_pairs():
    load = StepLoad.of(prefills=[(4, 10)], decode_lens=[7, 9])
    assert load == StepLoad(prefill_tokens=4, decode_tokens=2, context_tokens=4 * (10 + 2.5) + 16,
                            kv_read_tokens=(10 + 4) + 16)  # a chunk reads its prefix and itself once


def test_decode_time_sums_the_steps():
    cost = CostModel(TINY, TINY_HW)
    lens = [7, 12, 30]
    one_by_one = sum(cost.step_time(2, StepLoad.of(decode_lens=[n + k for n in lens])) for k in range(5))
    assert cost.decode_time(2, lens, steps=5) == pytest.approx(one_by_one)
    assert cost.decode_time(2, lens, steps=0) == 0.0


def test_kv_capacity_by_hand():
    cost = CostModel(TINY, TINY_HW)
    assert cost.kv_capacity_tokens(1) == (200 - 156) // 8
    assert cost.kv_capacity_tokens(2) == 2 * (200 - 100) // 8
    assert cost.kv_capacity_tokens(2, block_tokens=4) == 24


def test_kv_capacity_close_to_the_engine_layout():
    """The byte count agrees with the real page layout within the page padding of its slabs."""
    config = smol()
    profile = ModelProfile.from_config(config, max_tp=4, dtype_bytes=2)
    layout = device_layout(config, 4, block_tokens=16, dtype_bytes=2, memory_bytes=1 << 30)
    cost = CostModel(profile, HardwareProfile("cpu", 1e10, 1e11, 1e10, 0, 1 << 30))
    for tp in (1, 2, 4):
        engine_tokens = layout.kv_capacity(tp) * 16 * tp // 4  # pages are per head group; a TP-t block is 4/t of them
        assert cost.kv_capacity_tokens(tp, block_tokens=16) == pytest.approx(engine_tokens, rel=0.01)


def test_from_config_pads_like_the_engine():
    p = ModelProfile.from_config(smol(), max_tp=4, dtype_bytes=2)
    assert (p.heads, p.kv_heads, p.padded_heads, p.padded_kv_heads) == (9, 3, 12, 4)
    assert p.padded_intermediate == 1536 and p.tied_embeddings


def test_bad_tp_is_an_error():
    with pytest.raises(ValueError, match="max_tp 2"):
        CostModel(TINY, TINY_HW).step_time(4, StepLoad(decode_tokens=1))
    with pytest.raises(ValueError, match="power of two"):
        TINY.weight_bytes(3)


def test_bad_hardware_is_an_error():
    with pytest.raises(ValueError, match="mem_bandwidth"):
        HardwareProfile("x", 0, 1, 1, 0, 1)
    with pytest.raises(ValueError, match="link_latency"):
        HardwareProfile("x", 1, 1, 1, -1, 1)


def test_throughput_is_capped_by_kv_and_batch():
    cost = CostModel(TINY, TINY_HW)
    load = ServingLoad(requests=10, need_tokens=10, context_tokens=5)
    assert cost.concurrency(load, kv_capacity_tokens=25, max_batch=8) == 2
    assert cost.concurrency(load, kv_capacity_tokens=1000, max_batch=8) == 8
    assert cost.concurrency(load, kv_capacity_tokens=5, max_batch=8) == 0
    expected = 2 / cost.step_time(2, StepLoad(decode_tokens=2, context_tokens=10))
    assert cost.throughput(2, load, 25, 8) == pytest.approx(expected)
    assert cost.throughput(1, load, 5, 8) == 0.0


def test_throughput_counts_prompts_in_waves_of_chunks():
    cost = CostModel(TINY, TINY_HW)
    load = ServingLoad(requests=10, need_tokens=12, context_tokens=11, prompt_tokens=10)
    # 2 requests fit in 25 tokens: a wave prefills their 20 prompt tokens in 3 chunks of at most 8,
    # then decodes 12 - 10 - 1 = 1 step (the prefill made the first token); 24 tokens of work a wave
    prefill = StepLoad(prefill_tokens=7, context_tokens=2 * 10 * 11 / 2 / 3, kv_read_tokens=20 / 3)
    decode = StepLoad(decode_tokens=2, context_tokens=22)
    wave = 3 * cost.step_time(2, prefill) + cost.step_time(2, decode)
    assert cost.throughput(2, load, 25, 8, max_batched_tokens=8) == pytest.approx(24 / wave)
    assert cost.throughput(2, load, 25, 8) == pytest.approx(
        24 / (cost.step_time(2, StepLoad(prefill_tokens=20, context_tokens=110, kv_read_tokens=20))
              + cost.step_time(2, decode)))


def test_transform_cost_by_hand():
    # 2 devices * 12 B/s * 0.5 = 12 B/s; 120 B -> 10 s + 1 s switch; the switch moves 12 B -> 1 s + 1 s
    c = CostModel(TINY, TINY_HW).transform_cost(moved_bytes=120, switch_bytes=12, devices=2)
    assert (c.time_s, c.stall_s) == (pytest.approx(11.0), pytest.approx(2.0))
    with pytest.raises(ValueError, match="bad transformation"):
        CostModel(TINY, TINY_HW).transform_cost(10, 20, 2)


def _samples(cost: CostModel, unit_costs=None) -> list[StepSample]:
    unit_costs = cost.unit_costs() if unit_costs is None else unit_costs
    out = []
    for tp in (1, 2, 4):
        for prefill, decode, ctx in [(0, 1, 100), (0, 8, 4000), (0, 32, 30000), (256, 0, 40000), (128, 4, 9000),
                                     (512, 16, 200000)]:
            seconds = float(cost.quantities(tp, StepLoad(prefill, decode, ctx)) @ unit_costs)
            out.append(StepSample(tp, prefill, decode, ctx, seconds))
    return out


def test_fit_recovers_known_constants():
    model = ModelProfile.from_config(smol(), max_tp=4, dtype_bytes=2)
    base = HardwareProfile("cpu", mem_bandwidth=20e9, peak_flops=1e12, link_bandwidth=10e9, link_latency=0,
                           memory_bytes=1 << 30)
    truth = HardwareProfile("cpu", mem_bandwidth=20e9, peak_flops=1e12, link_bandwidth=10e9, link_latency=2e-5,
                            memory_bytes=1 << 30, mem_efficiency=0.4, flop_efficiency=0.15, link_efficiency=0.3,
                            step_overhead_s=1.5e-3)
    got = fit(_samples(CostModel(model, truth)), model, base)
    for name in ("mem_efficiency", "flop_efficiency", "link_efficiency", "link_latency", "step_overhead_s"):
        assert getattr(got, name) == pytest.approx(getattr(truth, name), rel=1e-6), name


def test_fit_drops_a_term_that_comes_out_negative():
    model = ModelProfile.from_config(smol(), max_tp=4, dtype_bytes=2)
    base = HardwareProfile("cpu", 20e9, 1e12, 10e9, 0, 1 << 30)
    cost = CostModel(model, base)
    units = np.array([1 / 8e9, 1 / 1.5e11, 1 / 3e9, -2e-6, 2e-3])  # all-reduces "faster than free"
    got = fit(_samples(cost, units), model, base)
    assert got.link_latency == 0.0
    assert all(0 < getattr(got, n) for n in ("mem_efficiency", "flop_efficiency", "link_efficiency", "step_overhead_s"))


def test_fit_keeps_base_for_terms_no_sample_shows():
    model = ModelProfile.from_config(smol(), max_tp=4, dtype_bytes=2)
    base = HardwareProfile("cpu", 20e9, 1e12, 10e9, 3e-5, 1 << 30, link_efficiency=0.7)
    tp1 = [s for s in _samples(CostModel(model, base)) if s.tp == 1]
    got = fit(tp1, model, base)
    assert (got.link_efficiency, got.link_latency) == (0.7, 3e-5)
    assert got.mem_efficiency == pytest.approx(1.0, rel=1e-6)
    assert math.isfinite(got.flop_efficiency)
    with pytest.raises(ValueError, match="at least one"):
        fit([], model, base)
