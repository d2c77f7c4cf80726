"""A device's part of a plan: move page runs in place, arena to arena.

Each move is a run of consecutive pages on both sides, so it is one contiguous tensor view: no
packing buffer, no memory beyond the arena. With `peers` (a CPU host where processes may read
each other, see peer_reads.py) every destination reads its runs straight out of the source's
arena. Otherwise every operation carries its move's index in the plan as tag, so the two ends
pair up whatever order they post in; both post the longest runs first, which keeps every link
busy while the short runs fill in (faster than plan order; measured: docs/benchmarks.md,
'Measurements behind code choices').
"""
import torch
import torch.distributed as dist

from gyges.transform import peer_reads
from gyges.transform.peer_reads import PeerArenas
from gyges.protocol.commands import Move


def run_moves(pages: torch.Tensor, device: int, moves: list[tuple[int, Move]], peers: PeerArenas | None = None) -> int:
    """Execute the moves (tagged by plan index) that start or end on `device`; returns the bytes
    that leave it. With `peers`, the sources' bytes must stay as they are until every device is done."""
    page_bytes = pages.stride(0) * pages.element_size()
    ops, local, pulls, sent = [], [], {}, 0
    for tag, mv in sorted(moves, key=lambda x: -x[1].count):
        src, dst = slice(mv.src_page, mv.src_page + mv.count), slice(mv.dst_page, mv.dst_page + mv.count)
        if mv.src == mv.dst == device:
            local.append((pages[dst], pages[src]))
        elif mv.src == device:
            sent += mv.count * page_bytes
            if peers is None:
                ops.append(dist.P2POp(dist.isend, pages[src], mv.dst, tag=tag))
        elif mv.dst == device and peers is not None:  # addresses only: no tensor views to build
            pulls.setdefault(mv.src, []).append(peer_reads.Run(
                pages.data_ptr() + mv.dst_page * page_bytes, peers.page_address(mv.src, mv.src_page), mv.count * page_bytes))
        elif mv.dst == device:
            ops.append(dist.P2POp(dist.irecv, pages[dst], mv.src, tag=tag))
    reqs = dist.batch_isend_irecv(ops) if ops else []
    for peer, runs in pulls.items():
        peer_reads.read(peers.pids[peer], runs)
    for dst, src in local:  # while the transfers run: destinations are pages free before the plan
        dst.copy_(src)
    for req in reqs:
        req.wait()
    return sent
