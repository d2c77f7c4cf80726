"""The process of one device: its arena, its model shard, and a loop over controller commands.

Commands arrive over a pipe as declared messages (gyges/protocol/commands.py: numpy arrays of ids,
never weight or KV tensors); anything else is refused. Collectives between workers go through
torch.distributed groups made at start-up, on loopback only.
"""
import os
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from gyges.engine.sampler import sample, token_logprobs
from gyges.heap import freeze_heap
from gyges.kernels import packed
from gyges.kernels.build import unavailable_reason
from gyges.kernels.shm_allreduce import ShmAllReduce, segment_path
from gyges.memory.arena import Arena
from gyges.memory.layout import device_layout, head_groups
from gyges.layers.attention import AttentionMeta, PrefillSeq
from gyges.layers.llama import ForwardBatch, LlamaShard
from gyges.model.loader import LazyWeights, load_config
from gyges.protocol.answers import CopyDone, DeviceInfo, StepResult, TransformStats
from gyges.protocol.commands import Command, CopyPages, Info, Shutdown, Step, StepInput, Transform
from gyges.transform import peer_reads
from gyges.transform.execute import run_moves
from gyges.transform.peer_reads import PeerArenas
from gyges.worker.rss import peak_rss, reset_peak_rss

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RENDEZVOUS_TIMEOUT = timedelta(seconds=300)


@dataclass(frozen=True)
class WorkerSpec:
    model_path: str
    dtype: str
    device_type: str
    memory_bytes: int
    max_tp: int
    block_tokens: int
    world_size: int
    threads: int
    cpu_kernels: bool = True
    peer_reads: bool = True  # CPU: moves read peers' arenas directly (gyges/transform/peer_reads.py)
    # set by the executor at each start
    master_port: int = 0
    layout: tuple[int, ...] = ()  # instance sizes at start-up, in device order (aligned groups)
    shm_prefix: str | None = None  # shared-memory all-reduce segments (gyges/kernels/shm_allreduce.py)
    shm_slot_bytes: int = 0


def aligned_groups(world_size: int, max_tp: int) -> list[tuple[int, int]]:
    """(start, size) of every aligned group of two or more devices, in one fixed order."""
    out, size = [], 2
    while size <= max_tp:
        out += [(start, size) for start in range(0, world_size, size)]
        size *= 2
    return out


def group_of(layout: tuple[int, ...], rank: int) -> tuple[int, int]:
    """(start, size) of the instance that device `rank` belongs to in `layout`."""
    start = 0
    for size in layout:
        if rank < start + size:
            return start, size
        start += size
    raise ValueError(f"device {rank} is outside the layout {layout}")


def loopback_store(rank: int, world_size: int, port: int) -> dist.TCPStore:
    """The rendezvous store, listening on 127.0.0.1 only: given a host, torch's own server still
    listens on every interface. Rank 0 binds the socket and hands it to the server."""
    if rank > 0:
        return dist.TCPStore("127.0.0.1", port, world_size, False, RENDEZVOUS_TIMEOUT)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return dist.TCPStore("127.0.0.1", port, world_size, True, RENDEZVOUS_TIMEOUT, master_listen_fd=sock.detach())


def cuda_device(rank: int) -> torch.device:
    """One GPU per device, bound as this process's current device (NCCL and kernels use it)."""
    if rank >= torch.cuda.device_count():
        raise RuntimeError(f"device {rank} needs GPU {rank}; this machine has {torch.cuda.device_count()}")
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    return device


class Worker:
    HANDLERS = {Step: lambda w, m: w.step(m.batch), CopyPages: lambda w, m: w.precopy(m.moves),
                Transform: lambda w, m: w.transform(m), Info: lambda w, m: w.info()}

    def __init__(self, rank: int, spec: WorkerSpec):
        self.rank, self.spec = rank, spec
        self.device = cuda_device(rank) if spec.device_type == "cuda" else torch.device("cpu")
        torch.set_num_threads(spec.threads)
        self.groups, self.comms = {}, {}
        if spec.world_size > 1:
            backend = "nccl" if spec.device_type == "cuda" else "gloo"
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pair sockets on loopback too
            dist.init_process_group(backend, store=loopback_store(rank, spec.world_size, spec.master_port), rank=rank,
                                    world_size=spec.world_size, timeout=RENDEZVOUS_TIMEOUT)
            for start, size in aligned_groups(spec.world_size, spec.max_tp):
                self.groups[(start, size)] = dist.new_group(list(range(start, start + size)))
                if spec.shm_prefix and start <= rank < start + size:
                    self.comms[(start, size)] = ShmAllReduce(segment_path(spec.shm_prefix, start, size), size,
                                                             rank - start, spec.shm_slot_bytes)
            for (start, size), group in self.groups.items():
                if start <= rank < start + size:
                    dist.barrier(group=group)  # gloo allocates on a group's first use: here, not mid-transformation
        self.config = load_config(Path(spec.model_path))
        dtype = DTYPES[spec.dtype]
        layout = device_layout(self.config, spec.max_tp, spec.block_tokens, dtype.itemsize, spec.memory_bytes)
        self.kernels_reason = self._kernels_off(dtype)
        kernels = not self.kernels_reason
        self.arena = Arena(layout, dtype, self.device, packed=kernels)
        self.peers, self.peer_reads_reason = self._peer_arenas()
        start, tp = group_of(spec.layout, rank)
        local = layout.rank_order(list(range(start, start + tp))).index(rank)  # as the controller's Instances
        self.load_weights(tp, local)
        self.model = LlamaShard(self.arena, kernels)
        self.bind(tp, local, start)

    def _kernels_off(self, dtype: torch.dtype) -> str:
        """Why the C kernels are off here ("" when they are on)."""
        if not self.spec.cpu_kernels:
            return "turned off (--no-cpu-kernels)"
        if self.device.type != "cpu":
            return f"the C kernels are for CPUs, not {self.device.type}"
        if dtype != torch.bfloat16:
            return f"the C kernels are bf16 only, the model runs in {self.spec.dtype}"
        return "" if packed.available(self.device, dtype) else unavailable_reason()

    def _peer_arenas(self) -> tuple[PeerArenas | None, str]:
        """Every device's arena address, if every device may read every other's (the kernel may
        forbid it), else None and why not. All devices agree, since a move's source does nothing
        when its destination reads."""
        if not self.spec.peer_reads:
            return None, "turned off (--no-peer-reads)"
        if self.device.type != "cpu":
            return None, f"peer reads are for CPU devices, not {self.device.type}"
        if self.spec.world_size == 1:
            return None, "a single device has no peers"
        pages = self.arena.pages
        everyone = [None] * self.spec.world_size
        dist.all_gather_object(everyone, (os.getpid(), pages.data_ptr()))
        stride = pages.stride(0) * pages.element_size()
        refusals = [(r, peer_reads.read_refusal(pid, base, stride)) for r, (pid, base) in enumerate(everyone)
                    if r != self.rank]
        mine = next((f"device {self.rank} may not read device {r}'s memory: {why}" for r, why in refusals if why), "")
        reasons = [None] * self.spec.world_size
        dist.all_gather_object(reasons, mine)
        refused = next((why for why in reasons if why), "")
        if refused:
            return None, f"{refused}; moves go through gloo"
        return PeerArenas([p for p, _ in everyone], [b for _, b in everyone], stride), ""

    def load_weights(self, tp: int, rank: int):
        """Write rank `rank`'s shard at TP `tp` into the arena, reading the model one layer at a
        time (`LazyWeights`): host memory holds the arena, not a copy of the model per device."""
        self.arena.load(LazyWeights(Path(self.spec.model_path), self.config, self.arena.pages.dtype),
                        head_groups(self.spec.max_tp, tp, rank))

    def bind(self, tp: int, rank: int, group_start: int):
        """Serve as rank `rank` of the TP-`tp` instance on the aligned group starting at `group_start`."""
        self.model.bind(tp, rank, self.groups.get((group_start, tp)), self.comms.get((group_start, tp)))

    def transform(self, t: Transform) -> TransformStats:
        """This device's part of a merge or split: KV units first (they vacate pages the weights
        need), then weight slabs, then serve at the new degree."""
        rss_before = reset_peak_rss()  # before the barrier: /proc I/O after it staggers the starts
        self.barrier(t.involved)
        kv_start = time.monotonic()
        kv_sent = self.move_pages(t.kv_moves)
        kv_end = time.monotonic()
        # weight slabs start when every device's KV is out: they would otherwise share the links
        # with the KV still in flight, and the KV phase would not be measured alone. Every device
        # takes this barrier, weight moves of its own or not (its peers cannot know).
        self.barrier(t.involved)
        weight_start = time.monotonic()
        weight_sent = self.move_pages(t.weight_moves)
        weight_end = time.monotonic()
        self.barrier(t.involved)  # peers may still be reading this device's pages; a step would overwrite them
        self.bind(t.tp, t.rank, t.group_start)
        peak = peak_rss()
        return TransformStats(kv_sent, kv_start, kv_end, weight_sent, weight_start, weight_end,
                              None if rss_before is None or peak is None else max(0, peak - rss_before))

    def barrier(self, group: tuple[int, int]):
        """Wait for every device of the aligned group (start, size) (or of the world when (0, world
        size) is not one). Through shared memory where the group has it: gloo's barrier lets ranks
        leave milliseconds apart on a busy host."""
        if group[1] < 2:
            return
        if group in self.comms:
            self.comms[group].all_reduce(torch.zeros(1))
        else:
            dist.barrier(group=self.groups.get(group))

    def _tensor(self, a) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device)

    def step(self, s: StepInput) -> StepResult | None:
        t = self._tensor
        meta = AttentionMeta(
            slot_pages=t(s.slot_pages), slot_offsets=t(s.slot_offsets), decode_rows=t(s.decode_rows),
            decode_tables=t(s.decode_tables), decode_lens=t(s.decode_lens),
            prefills=[PrefillSeq(a, b, c, t(tab)) for a, b, c, tab in s.prefills],
            block_tokens=self.spec.block_tokens, sliding_window=self.model.config.sliding_window)
        batch = ForwardBatch(t(s.input_ids), t(s.positions), meta, t(s.logit_rows))
        driver = self.model.rank == 0
        logits = self.model.forward(batch, want_logits=driver and len(s.logit_rows) > 0)
        if not driver:
            return None
        if logits is None:
            return StepResult([])
        logits = logits.cpu()
        tokens = sample(logits, s.samples)
        return StepResult(tokens, logits.numpy() if s.want_logits else None, token_logprobs(logits, s.samples, tokens))

    def precopy(self, moves: list) -> CopyDone:
        t0 = time.perf_counter()
        sent = self.move_pages(moves)
        return CopyDone(sent, time.perf_counter() - t0)

    def move_pages(self, moves: list) -> int:
        """Move page runs (tagged by plan index) arena to arena; returns the bytes that leave this device."""
        return run_moves(self.arena.pages, self.rank, moves, self.peers)

    def info(self) -> DeviceInfo:
        lay = self.arena.layout
        return DeviceInfo(lay.num_pages, lay.page_bytes, os.getpid(), not self.kernels_reason, self.kernels_reason,
                          self.peers is not None, self.peer_reads_reason)

    def handle(self, msg: Command):
        """Run a declared command; anything else is refused."""
        handler = self.HANDLERS.get(type(msg))
        if handler is None:
            names = ", ".join(sorted(c.__name__ for c in self.HANDLERS))
            raise TypeError(f"{type(self).__name__} refuses {type(msg).__name__!s}: not a declared command ({names})")
        return handler(self, msg)


def worker_main(rank: int, spec: WorkerSpec, conn, worker_class: type[Worker] = Worker):
    """The process's body: build the worker (of `worker_class`: tests and benchmarks pass subclasses
    that declare more commands), answer its info, then one answer per command until Shutdown."""
    try:
        worker = worker_class(rank, spec)
        freeze_heap()
        conn.send(("ok", worker.info()))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if isinstance(msg, Shutdown):
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", worker.handle(msg)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
