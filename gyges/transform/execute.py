"""A device's part of a plan: send and receive page runs in place, arena to arena.

Each move is a run of consecutive pages on both sides, so it is one contiguous tensor view: no
packing buffer, no memory beyond the arena. Every operation carries its move's index in the plan
as tag, so the two ends pair up whatever order they post in; both post the longest runs first,
which keeps every link busy while the short runs fill in (about 10% faster here than plan order).
"""
import torch
import torch.distributed as dist

from gyges.transform.plan import Move


def run_moves(pages: torch.Tensor, device: int, moves: list[tuple[int, Move]]) -> int:
    """Execute the moves (tagged by plan index) that start or end on `device`; returns bytes sent."""
    ops, local, sent = [], [], 0
    for tag, mv in sorted(moves, key=lambda x: -x[1].count):
        src = pages[mv.src_page:mv.src_page + mv.count]
        dst = pages[mv.dst_page:mv.dst_page + mv.count]
        if mv.src == mv.dst == device:
            local.append((dst, src))
        elif mv.src == device:
            ops.append(dist.P2POp(dist.isend, src, mv.dst, tag=tag))
            sent += src.numel() * src.element_size()
        elif mv.dst == device:
            ops.append(dist.P2POp(dist.irecv, dst, mv.src, tag=tag))
    reqs = dist.batch_isend_irecv(ops) if ops else []
    for dst, src in local:  # while the transfers run: destinations are pages free before the plan
        dst.copy_(src)
    for req in reqs:
        req.wait()
    return sent
