"""Merge and split plans alone: every unit lands once, nothing overlaps, weights stay put."""
import random

import numpy as np
import pytest

from gyges.memory.layout import device_layout
from gyges.transform.plan import SeqKV, TransformError, owner_of, plan_merge, plan_split
from tests.memory.test_layout import SMOLLM2

LAYOUT = device_layout(SMOLLM2, 4, 16, 2, 512 * 2**20)


def fill(instances, blocks_per_seq, seed=0):
    """Requests on `instances` (devices in rank order) with pages taken from each device's pool."""
    rng = random.Random(seed)
    free = {}
    for inst in instances:
        for r, d in enumerate(inst):
            free[d] = LAYOUT.free_pages(len(inst), r)
    seqs, n = [], 0
    for i, inst in enumerate(instances):
        for nb in blocks_per_seq[i]:
            pages = []
            for g in range(4):
                d = owner_of(inst, 4, g)
                take = rng.sample(free[d], nb)
                free[d] = [p for p in free[d] if p not in take]
                pages.append(take)
            seqs.append(SeqKV(n, i, pages))
            n += 1
    return seqs, free


def check(plan, seqs, free_before, layout=LAYOUT):
    used = {d: set() for d in free_before}
    for part in plan.instances:
        for r, d in enumerate(part):
            used[d] |= set(layout.weight_pages(len(part), r))
    for s in seqs:
        part = plan.instances[plan.seq_instance[s.seq_id]]
        pages = plan.seq_pages[s.seq_id]
        assert [len(g) for g in pages] == [len(g) for g in s.pages]  # every unit once
        for g, row in enumerate(pages):
            d = owner_of(part, 4, g)
            for p in row:
                assert p not in used[d], f"page {p} of device {d} used twice"
                assert layout.replicated_pages <= p < layout.num_pages
                used[d].add(p)
    for d, pages in plan.free_after.items():
        assert not set(pages) & used[d] and len(set(pages)) == len(pages)
        # pages are conserved: weights + KV + free = the whole arena
        assert len(used[d]) + len(pages) + layout.replicated_pages == layout.num_pages


def test_merge_four_tp1_into_tp4_frees_three_slabs_per_device_and_moves_three_quarters():
    insts = [[0], [1], [2], [3]]
    seqs, free = fill(insts, [[5, 3], [2], [7], []])
    plan = plan_merge(LAYOUT, insts, seqs, free)
    assert plan.instances == [[0, 1, 2, 3]]
    check(plan, seqs, free)
    total_units = sum(4 * len(s.pages[0]) for s in seqs)
    assert plan.kv_units_moved == total_units * 3 // 4
    assert not plan.weight_moves
    # each device's KV pool grew by the three slabs it gave up, less what it received net
    for d in range(4):
        assert len(plan.free_after[d]) > len(free[d])


def test_merge_two_tp2_interleaves_ranks_so_weights_only_shrink():
    insts = [[0, 1], [2, 3]]
    seqs, free = fill(insts, [[4], [6, 1]])
    plan = plan_merge(LAYOUT, insts, seqs, free)
    assert plan.instances == [[0, 2, 1, 3]]
    for r, d in enumerate(plan.instances[0]):
        old = insts[d // 2]
        assert set(LAYOUT.weight_pages(4, r)) <= set(LAYOUT.weight_pages(2, old.index(d)))
    check(plan, seqs, free)


@pytest.mark.parametrize("start,k", [([0, 1, 2, 3], 2), ([0, 1, 2, 3], 4), ([0, 2, 1, 3], 2)])
def test_split_fetches_missing_slabs_evacuates_their_pages_and_balances(start, k):
    seqs, free = fill([start], [[9, 4, 4, 3, 1]])
    plan = plan_split(LAYOUT, start, k, seqs, free)
    assert len(plan.instances) == k and sorted(sum(plan.instances, [])) == [0, 1, 2, 3]
    check(plan, seqs, free)
    for part in plan.instances:
        assert sorted(part) == list(range(min(part), min(part) + len(part))) and min(part) % len(part) == 0  # aligned
        for r, d in enumerate(part):
            need = set(LAYOUT.weight_pages(len(part), r))
            have = set(LAYOUT.weight_pages(4, start.index(d)))
            fetched = {p for mv in plan.weight_moves if mv.dst == d for p in range(mv.dst_page, mv.dst_page + mv.count)}
            assert need <= have | fetched
            assert not fetched & have
    loads = [sum(len(s.pages[0]) for s in seqs if plan.seq_instance[s.seq_id] == j) for j in range(k)]
    assert max(loads) - min(loads) <= 9  # greedy balance: within the largest request


def test_split_that_cannot_fit_is_refused_with_a_reason():
    small = device_layout(SMOLLM2, 4, 16, 2, 300 * 2**20)
    insts = [[0, 1, 2, 3]]
    free = {d: small.free_pages(4, r) for r, d in enumerate(insts[0])}
    nb = len(free[0]) - 5
    seqs = [SeqKV(0, 0, [free[d][:nb] for d in insts[0]])]
    with pytest.raises(TransformError, match="split refused"):
        plan_split(small, insts[0], 4, seqs, free)


def test_merge_rejects_misaligned_or_mixed_instances():
    with pytest.raises(TransformError, match="aligned"):
        plan_merge(LAYOUT, [[1], [2]], [], {1: [], 2: []})
    with pytest.raises(TransformError, match="one TP degree"):
        plan_merge(LAYOUT, [[0, 1], [2]], [], {})



def test_split_uses_a_precopied_unit_only_where_its_request_still_lands():
    """A split places requests again at the switch: a unit pre-copied towards the part the tentative
    plan chose is used where it still belongs, and moved afresh where the request now lands on the
    other part (here it must leave a page the new weights need, and the copy sits on the wrong device)."""
    devices = [0, 1]
    free = {d: LAYOUT.free_pages(2, r) for r, d in enumerate(devices)}
    slab2 = LAYOUT.slab_pages_of(2)               # device 0 holds KV there at TP2, its weights at TP1
    outside = LAYOUT.replicated_pages             # below every slab, free on both devices
    big = SeqKV(0, 0, [[slab2.start, slab2.start + 1], [outside, outside + 1],
                       [outside + 2, outside + 3], [outside + 4, outside + 5]])
    small = SeqKV(1, 0, [[outside + 6], [outside + 7], [outside + 8], [outside + 9]])
    taken = {0: set(big.pages[0] + big.pages[1] + small.pages[0] + small.pages[1]),
             1: set(big.pages[2] + big.pages[3] + small.pages[2] + small.pages[3])}
    free = {d: [p for p in free[d] if p not in taken[d]] for d in devices}
    wrong = free[1][-2:]   # pre-copied as if `big` went to device 1: group 0 from device 0
    right = free[0][-2:]   # and group 2 from device 1 to device 0, where it does go
    placed = {(0, 0): (np.array(big.pages[0]), 1, np.array(wrong)), (0, 2): (np.array(big.pages[2]), 0, np.array(right))}
    free = {0: free[0][:-2], 1: free[1][:-2]}      # reserved while the copies ran
    plan = plan_split(LAYOUT, devices, 2, [big, small], free, placed)
    assert plan.instances[plan.seq_instance[0]] == [0]
    assert not set(wrong) & set(plan.free_after[1])
    plan.free_after[1] = np.concatenate([plan.free_after[1], wrong])  # the switch frees the unused reservation
    check(plan, [big, small], free)
    assert plan.seq_pages[0][2] == right
    assert not set(plan.seq_pages[0][0]) & set(wrong + list(slab2))
    assert {(mv.src, mv.dst) for mv in plan.kv_moves if mv.src_page == slab2.start} == {(0, 0)}


def test_a_model_that_needs_tp2_merges_in_place_splits_back_and_refuses_a_split_that_would_overwrite():
    from tests.memory.test_layout import layout_needing_tp2
    lay = layout_needing_tp2()
    insts = [[0, 1], [2, 3]]
    free = {d: lay.free_pages(2, r) for inst in insts for r, d in enumerate(inst)}
    merged = plan_merge(lay, insts, [], free)
    assert merged.instances == [[0, 2, 1, 3]] and not merged.weight_moves
    assert all(max(p) < lay.num_pages for p in merged.free_after.values())
    back = plan_split(lay, [0, 2, 1, 3], 2, [], merged.free_after)
    assert back.instances == [[0, 1], [2, 3]]
    assert back.weight_moves and all(mv.dst_page + mv.count <= lay.num_pages for mv in back.weight_moves)
    # a TP4 instance built in device order: device 1 would drop the group device 0 copies from it
    with pytest.raises(TransformError, match="overwrite"):
        plan_split(lay, [0, 1, 2, 3], 2, [], {d: lay.free_pages(4, d) for d in range(4)})
    # so new instances take the order a merge gives them, and split like a merged one
    built = lay.rank_order([0, 1, 2, 3])
    assert built == [0, 2, 1, 3]
    assert plan_split(lay, built, 2, [], {d: lay.free_pages(4, r) for r, d in enumerate(built)}).instances == [[0, 1], [2, 3]]
    assert LAYOUT.rank_order([0, 1, 2, 3]) == [0, 1, 2, 3]  # a model that fits one device: device order
