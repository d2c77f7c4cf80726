"""A device's part of a plan, with the destination reading from its peers' arenas."""
import os

import torch

from gyges.transform.execute import run_moves
from gyges.transform.peer_reads import PeerArenas
from gyges.protocol.commands import Move


def test_destination_reads_its_runs_from_peer_arenas_and_copies_local_ones():
    """Three devices' arenas in this process; device 0 runs its part of a plan."""
    arenas = [torch.full((40, 256), float(d + 1)) for d in range(3)]
    for d, a in enumerate(arenas):
        a[:, 0] = torch.arange(40) + 100 * d  # every page of every device is distinct
    peers = PeerArenas([os.getpid()] * 3, [a.data_ptr() for a in arenas], 256 * 4)
    moves = list(enumerate([Move(1, 0, 5, 20, 3), Move(2, 0, 0, 30, 1), Move(0, 0, 10, 35, 2),
                            Move(0, 2, 1, 7, 4), Move(1, 2, 0, 0, 1)]))  # the last one is not device 0's
    before = [a.clone() for a in arenas]
    sent = run_moves(arenas[0], 0, moves, peers)
    assert sent == 4 * 256 * 4  # what leaves device 0: its peer reads it
    assert torch.equal(arenas[0][20:23], before[1][5:8])
    assert torch.equal(arenas[0][30], before[2][0])
    assert torch.equal(arenas[0][35:37], before[0][10:12])
    untouched = [p for p in range(40) if p not in (20, 21, 22, 30, 35, 36)]
    assert torch.equal(arenas[0][untouched], before[0][untouched])
    assert torch.equal(arenas[1], before[1]) and torch.equal(arenas[2], before[2])
