"""The layout's promises: every rank's weights and KV slice are contiguous at every TP degree."""
import pytest

from gyges.memory.layout import HeadPadding, device_layout, head_groups, real_runs, run_rows
from gyges.model.config import ModelConfig

SMOLLM2 = ModelConfig(arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                      num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=1e5,
                      max_position_embeddings=8192, tie_word_embeddings=True)


def test_smollm2_pads_to_twelve_and_four_heads():
    pad = HeadPadding.of(SMOLLM2, 4)
    assert (pad.num_heads, pad.num_kv_heads, pad.q_per_shard, pad.kv_per_shard) == (12, 4, 3, 1)
    assert pad.intermediate_size % 4 == 0 and pad.intermediate_size >= 1536
    assert HeadPadding.of(SMOLLM2, 1).num_heads == 9


@pytest.mark.parametrize("max_tp", [1, 2, 4, 8])
def test_weight_and_kv_ranges_are_contiguous_for_every_tp_and_rank(max_tp):
    lay = device_layout(SMOLLM2, max_tp, 16, 2, 2**30)
    tp = 1
    while tp <= max_tp:
        owned = []
        for rank in range(tp):
            pages = lay.weight_pages(tp, rank)
            assert pages.step == 1 and len(pages) == lay.slab_pages * (max_tp // tp)
            owned.append(set(pages))
            # the KV slice of a block this rank owns is one contiguous run of head groups (units)
            groups = head_groups(max_tp, tp, rank)
            assert list(groups) == list(range(groups.start, groups.stop)) and len(groups) == max_tp // tp
            # and the weight pages it owns are exactly the slabs of those head groups
            assert pages == range(lay.slab_pages_of(groups.start).start, lay.slab_pages_of(groups.stop - 1).stop)
            free = lay.free_pages(tp, rank)
            assert not set(free) & set(pages) and not set(free) & set(range(lay.replicated_pages))
            assert len(free) + len(pages) + lay.replicated_pages == lay.num_pages == len(free) + lay.min_pages(tp)
            assert len(free) == lay.kv_capacity(tp) and free == sorted(set(free))
        # the ranks of an instance together hold every slab exactly once
        assert set().union(*owned) == set(range(lay.replicated_pages, lay.replicated_pages + max_tp * lay.slab_pages))
        assert sum(map(len, owned)) == max_tp * lay.slab_pages
        tp *= 2


def test_slots_do_not_overlap_and_fit_their_slab():
    lay = device_layout(SMOLLM2, 4, 16, 2, 2**30)
    for slots, pages in ((lay.shard, lay.slab_pages), (lay.replicated, lay.replicated_pages)):
        spans = sorted((s.offset, s.offset + s.numel) for s in slots.values())
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        assert spans[-1][1] <= pages * lay.page_elems


def test_page_is_one_kv_unit():
    lay = device_layout(SMOLLM2, 4, 16, 2, 2**30)
    assert lay.unit.shape == (30, 2, 1, 16, 64)
    assert lay.page_bytes == 30 * 2 * 16 * 64 * 2


def test_real_runs_skip_padding_and_keep_the_unpadded_order():
    """SmolLM2 at max_tp 4 is 12 / 4 heads: at TP1 the fourth group is all padding and costs nothing;
    at max_tp 2 (also 12 / 4) the second group is half padding and only its real heads are kept."""
    d = 64
    pad4 = HeadPadding.of(SMOLLM2, 4)
    qkv = real_runs(SMOLLM2, pad4, "qkv", head_groups(4, 1, 0))
    assert [(r.piece, r.start, r.stop) for r in qkv] == (
        [(j, 0, 3 * d) for j in range(3)] + [(j, 3 * d, 4 * d) for j in range(3)] + [(j, 4 * d, 5 * d) for j in range(3)])
    assert run_rows(qkv) == (9 + 3 + 3) * d
    assert run_rows(real_runs(SMOLLM2, pad4, "o", head_groups(4, 1, 0))) == 9 * d
    assert real_runs(SMOLLM2, pad4, "qkv", head_groups(4, 4, 3)) == []  # the padding rank computes nothing
    pad2 = HeadPadding.of(SMOLLM2, 2)
    assert [(r.piece, r.start, r.stop) for r in real_runs(SMOLLM2, pad2, "o", head_groups(2, 1, 0))] == [
        (0, 0, 6 * d), (1, 0, 3 * d)]
    # unpadded at TP = max_tp: one run, the whole piece
    assert [(r.piece, r.start, r.stop) for r in real_runs(SMOLLM2, HeadPadding.of(SMOLLM2, 1), "qkv", range(1))] == [
        (0, 0, 15 * d)]
    gate_up = real_runs(SMOLLM2, pad4, "gate_up", head_groups(4, 2, 1))
    assert [(r.piece, r.start, r.stop) for r in gate_up] == [(0, 0, 384), (1, 0, 384), (0, 384, 768), (1, 384, 768)]
    with pytest.raises(ValueError, match="no sharded matrix"):
        real_runs(SMOLLM2, pad4, "embed", range(1))


def layout_needing_tp2(max_tp: int = 4):
    """SmolLM2 on devices with room for only three of its four weight slabs: it fits from TP2 on."""
    big = device_layout(SMOLLM2, max_tp, 16, 2, 2**30)
    pages = big.replicated_pages + 3 * big.slab_pages + 64
    return device_layout(SMOLLM2, max_tp, 16, 2, pages * big.page_bytes)


def test_a_model_that_needs_tp2_is_addressed_within_each_device():
    lay = layout_needing_tp2()
    assert lay.kv_capacity(1) < 0 < lay.kv_capacity(2) and lay.slots == 2
    for tp in (2, 4):
        for rank in range(tp):
            pages = lay.weight_pages(tp, rank)
            assert pages.stop <= lay.num_pages and len(pages) == lay.slab_pages * (4 // tp)
            free = lay.free_pages(tp, rank)
            assert len(free) == lay.kv_capacity(tp) and max(free) < lay.num_pages and not set(free) & set(pages)
    assert lay.slab_region().stop <= lay.num_pages
    assert device_layout(SMOLLM2, 4, 16, 2, 2**30).slots == 4  # a model that fits one device: a slot per group
