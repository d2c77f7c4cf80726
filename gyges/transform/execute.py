"""A device's part of a plan: send and receive page runs in place, arena to arena.

Each move is a run of consecutive pages on both sides, so it is one contiguous tensor view: no
packing buffer, no memory beyond the arena. Both ends post their operations in the plan's order
with the move's index as tag, so they pair up unambiguously.
"""
import torch
import torch.distributed as dist

from gyges.transform.plan import Move


def run_moves(pages: torch.Tensor, device: int, moves: list[tuple[int, Move]]) -> int:
    """Execute the moves (tagged by plan index) that start or end on `device`; returns bytes sent."""
    ops, sent = [], 0
    for tag, mv in moves:
        src = pages[mv.src_page:mv.src_page + mv.count]
        dst = pages[mv.dst_page:mv.dst_page + mv.count]
        if mv.src == mv.dst == device:
            dst.copy_(src)
        elif mv.src == device:
            ops.append(dist.P2POp(dist.isend, src, mv.dst, tag=tag))
            sent += src.numel() * src.element_size()
        elif mv.dst == device:
            ops.append(dist.P2POp(dist.irecv, dst, mv.src, tag=tag))
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()
    return sent
