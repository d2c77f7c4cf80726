"""Worker-side measurements for the transformation benchmark: the machine's transfer limits for
the same bytes a plan moves, the same KV moved in a vLLM-style token-major layout, and reloading
weights from disk (the drain-and-restart baseline). They run as commands of `BenchWorker`, which
the benchmark hands its cluster as the worker class; the production worker declares none of them.

Each returns (start, end) on `time.monotonic()`, one clock for every process of the host, so the
benchmark times a move across devices as max(end) - min(start), exactly like the transformation."""
import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gyges.memory.arena import host_bytes
from gyges.transform import peer_reads
from gyges.transform.peer_reads import Run
from gyges.protocol.commands import Command
from gyges.worker.worker import Worker

Stamps = tuple[float, float]


def _pair_bytes(moves, page_bytes: int) -> dict[tuple[int, int], int]:
    out = {}
    for _, mv in moves:
        if mv.src != mv.dst:
            out[(mv.src, mv.dst)] = out.get((mv.src, mv.dst), 0) + mv.count * page_bytes
    return out


EVICT_BYTES = 64 << 20  # twice this machine's last-level cache


def _resident(nbytes: int) -> torch.Tensor:
    """A buffer whose pages exist and hold data, in pages of the arena's kind, like KV pages: a
    fresh `torch.empty` would be sent from the kernel's shared zero page (always in cache) and
    received through page faults."""
    return host_bytes(nbytes).fill_(1)


def _buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A resident tensor in the arena's kind of memory."""
    return _resident(math.prod(shape) * dtype.itemsize).view(dtype).view(shape)


def _evict_caches():
    """Push freshly filled buffers out of the caches: a transformation's KV pages are cold, the
    decode steps before it stream the weights through the caches."""
    torch.ones(EVICT_BYTES, dtype=torch.uint8).add_(1)


def send_recv_limit(worker, moves, cold: bool = True) -> Stamps:
    """Seconds to send, as one contiguous buffer per peer, the bytes `moves` send between devices;
    `cold`: from and into memory that is not in the caches, as a transformation's KV is."""
    pairs = _pair_bytes(moves, worker.arena.layout.page_bytes)
    me = worker.rank
    bufs = {k: _resident(n) for k, n in pairs.items() if me in k}
    if cold:
        _evict_caches()
    worker.barrier((0, worker.spec.world_size))
    t = time.monotonic()
    ops = [dist.P2POp(dist.isend if src == me else dist.irecv, buf, dst if src == me else src)
           for (src, dst), buf in bufs.items()]
    for req in (dist.batch_isend_irecv(ops) if ops else []):
        req.wait()
    return t, time.monotonic()


def all_to_all_limit(worker, moves, devices: list[int], cold: bool = True) -> Stamps:
    """Seconds for all_to_all_single over `devices` moving the same bytes per pair (`cold` as above)."""
    pairs = _pair_bytes(moves, worker.arena.layout.page_bytes)
    me = worker.rank
    out_sizes = [pairs.get((me, d), 0) for d in devices]
    in_sizes = [pairs.get((d, me), 0) for d in devices]
    send, recv = _resident(sum(out_sizes)), _resident(sum(in_sizes))
    if cold:
        _evict_caches()
    group = worker.groups[(min(devices), len(devices))]
    worker.barrier((min(devices), len(devices)))
    t = time.monotonic()
    dist.all_to_all_single(recv, send, in_sizes, out_sizes, group=group)
    return t, time.monotonic()


def _everyone(worker, value) -> list:
    out = [None] * worker.spec.world_size
    dist.all_gather_object(out, value)
    return out


def peer_read_limit(worker, moves, cold: bool = True) -> Stamps | None:
    """Seconds for every device to read, as one contiguous run per peer, the bytes `moves` bring it
    straight from the peers' memory (`cold` as above); None where the workers cannot read each other."""
    if worker.peers is None:
        return None
    pairs = _pair_bytes(moves, worker.arena.layout.page_bytes)
    me = worker.rank
    outgoing = {k: _resident(n) for k, n in pairs.items() if k[0] == me}
    incoming = {k: _resident(n) for k, n in pairs.items() if k[1] == me}
    where = _everyone(worker, {k: b.data_ptr() for k, b in outgoing.items()})
    if cold:
        _evict_caches()
    world = (0, worker.spec.world_size)
    worker.barrier(world)
    t = time.monotonic()
    for (src, dst), buf in incoming.items():
        peer_reads.read(worker.peers.pids[src], [Run(buf.data_ptr(), where[src][(src, dst)], buf.numel())])
    stamps = t, time.monotonic()
    worker.barrier(world)  # the sources stay until every reader is done
    return stamps


def memcpy_limit(nbytes: int) -> float:
    src, dst = torch.empty(nbytes, dtype=torch.uint8), torch.empty(nbytes, dtype=torch.uint8)
    t = time.perf_counter()
    dst.copy_(src)
    return time.perf_counter() - t


def token_major_move(worker, moves) -> Stamps:
    """The same units moved in vLLM's layout: per layer [blocks, block_tokens, heads, head_dim], so a
    head group of a block is strided; gather it into a buffer, move that buffer by the transport the
    transformation uses (a peer read, or gloo send/recv), scatter at the receiver. Cache and
    buffers are the arena's kind of memory. With peer reads, a reader must wait until its source
    has gathered: that barrier is part of this protocol (header-centric moves need none, their
    units are contiguous where they lie), so it is inside the timed span, through shared memory
    where the group has it."""
    lay = worker.arena.layout
    u = lay.unit
    me, max_tp = worker.rank, lay.max_tp
    mine = [(i, mv) for i, (_, mv) in enumerate(moves) if mv.src != mv.dst and me in (mv.src, mv.dst)]
    blocks = sum(mv.count for _, mv in mine) or 1  # this device's blocks, numbered in plan order
    cache = _buffer((u.num_layers, 2, blocks, u.block_tokens, u.heads * max_tp, u.head_dim), worker.arena.pages.dtype)
    gathers, scatters, at = [], [], 0
    for i, mv in mine:
        g = i % max_tp  # which head group does not change the cost
        hs = slice(g * u.heads, (g + 1) * u.heads)
        buf = _buffer((u.num_layers, 2, mv.count, u.block_tokens, u.heads, u.head_dim), cache.dtype)
        (gathers if mv.src == me else scatters).append((i, mv, buf, cache[:, :, at:at + mv.count, :, hs]))
        at += mv.count
    world = (0, worker.spec.world_size)
    where = _everyone(worker, {i: buf.data_ptr() for i, _, buf, _ in gathers}) if worker.peers else None
    worker.barrier(world)
    t = time.monotonic()
    for _, _, buf, view in gathers:
        buf.copy_(view)
    if where is not None:
        worker.barrier(world)  # gathered everywhere before anyone reads
        for i, mv, buf, _ in scatters:
            peer_reads.read(worker.peers.pids[mv.src], [Run(buf.data_ptr(), where[mv.src][i], buf.nbytes)])
    else:
        ops = [dist.P2POp(dist.isend, buf, mv.dst, tag=i) for i, mv, buf, _ in gathers]
        ops += [dist.P2POp(dist.irecv, buf, mv.src, tag=i) for i, mv, buf, _ in scatters]
        for req in (dist.batch_isend_irecv(ops) if ops else []):
            req.wait()
    for _, _, buf, view in scatters:
        view.copy_(buf)
    stamps = t, time.monotonic()
    worker.barrier(world)  # the sources stay until every reader is done
    return stamps


def reload_from_disk(worker, tp: int, rank: int) -> Stamps:
    """Read the model from disk and lay this rank's shard into the arena."""
    t = time.monotonic()
    worker.load_weights(tp, rank)
    return t, time.monotonic()


@dataclass(frozen=True)
class SendRecvLimit(Command):
    moves: list
    cold: bool = True


@dataclass(frozen=True)
class AllToAllLimit(Command):
    moves: list
    devices: list[int]
    cold: bool = True


@dataclass(frozen=True)
class PeerReadLimit(Command):
    moves: list
    cold: bool = True


@dataclass(frozen=True)
class TokenMajorMove(Command):
    moves: list


@dataclass(frozen=True)
class ReloadFromDisk(Command):
    tp: int
    rank: int


class BenchWorker(Worker):
    """The worker with the benchmark's measurements declared as commands."""
    HANDLERS = {**Worker.HANDLERS,
                SendRecvLimit: lambda w, m: send_recv_limit(w, m.moves, m.cold),
                AllToAllLimit: lambda w, m: all_to_all_limit(w, m.moves, m.devices, m.cold),
                PeerReadLimit: lambda w, m: peer_read_limit(w, m.moves, m.cold),
                TokenMajorMove: lambda w, m: token_major_move(w, m.moves),
                ReloadFromDisk: lambda w, m: reload_from_disk(w, m.tp, m.rank)}
