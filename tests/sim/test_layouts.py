from gyges.sim.layouts import aligned, candidates, partitions


def test_partitions_of_a_host_of_8():
    parts = partitions(8, 8)
    assert len(parts) == 10 and (8,) in parts and (4, 2, 1, 1) in parts and (1,) * 8 in parts
    assert all(sum(p) == 8 and list(p) == sorted(p, reverse=True) for p in parts)


def test_candidates_uniform_first_and_at_most_ten():
    c = candidates(8, 8)
    assert list(c)[:4] == ["static-tp1", "static-tp2", "static-tp4", "static-tp8"]
    assert len(c) == 10 and c["static-4+2+1+1"] == (4, 2, 1, 1)
    assert list(candidates(8, 4)) [:3] == ["static-tp1", "static-tp2", "static-tp4"]
    assert len(candidates(16, 16)) == 10


def test_aligned_is_a_buddy_layout():
    assert aligned((1, 4, 2, 1)) == [[0, 1, 2, 3], [4, 5], [6], [7]]
    assert all(inst[0] % len(inst) == 0 for inst in aligned((2, 1, 1, 4)))
