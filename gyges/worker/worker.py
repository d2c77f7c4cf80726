"""The process of one device: its arena, its model shard, and a loop over controller commands.

Commands arrive over a pipe as small picklable messages (numpy arrays of ids, never weight or
KV tensors); collectives between workers go through torch.distributed groups made at start-up.
"""
import os
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from gyges.engine.batch import StepInput
from gyges.engine.sampler import sample, token_logprobs
from gyges.kernels import packed
from gyges.kernels.shm_allreduce import ShmAllReduce, segment_path
from gyges.memory.arena import Arena
from gyges.memory.layout import device_layout, head_groups
from gyges.model.attention import AttentionMeta, PrefillSeq
from gyges.model.llama import ForwardBatch, LlamaShard
from gyges.model.loader import iter_weights, load_config
from gyges.transform import peer_reads
from gyges.transform.execute import run_moves
from gyges.transform.peer_reads import PeerArenas
from gyges.worker.rss import peak_rss, reset_peak_rss

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class WorkerSpec:
    model_path: str
    dtype: str
    device_type: str
    memory_bytes: int
    max_tp: int
    block_tokens: int
    world_size: int
    master_port: int
    threads: int
    tp: int  # TP degree at start-up; instances are aligned groups of this size
    cpu_kernels: bool = True
    shm_prefix: str | None = None  # shared-memory all-reduce segments (gyges/kernels/shm_allreduce.py)
    shm_slot_bytes: int = 0
    peer_reads: bool = True  # CPU: moves read peers' arenas directly (gyges/transform/peer_reads.py)


def aligned_groups(world_size: int, max_tp: int) -> list[tuple[int, int]]:
    """(start, size) of every aligned group of two or more devices, in one fixed order."""
    out, size = [], 2
    while size <= max_tp:
        out += [(start, size) for start in range(0, world_size, size)]
        size *= 2
    return out


class Worker:
    def __init__(self, rank: int, spec: WorkerSpec):
        self.rank, self.spec = rank, spec
        self.fault: str | None = None  # set by tests (through `invoke`) to fail a transformation part-way
        self.device = torch.device(f"cuda:{rank}" if spec.device_type == "cuda" else "cpu")
        torch.set_num_threads(spec.threads)
        self.groups, self.comms = {}, {}
        if spec.world_size > 1:
            backend = "nccl" if spec.device_type == "cuda" else "gloo"
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{spec.master_port}", rank=rank,
                                    world_size=spec.world_size, timeout=timedelta(seconds=300))
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
        kernels = spec.cpu_kernels and packed.available(self.device, dtype)  # bf16 on a CPU with AVX512-BF16
        self.arena = Arena(layout, dtype, self.device, packed=kernels)
        self.peers = self._peer_arenas() if spec.peer_reads and spec.device_type == "cpu" and spec.world_size > 1 else None
        tp, local = spec.tp, rank % spec.tp
        self.load_weights(tp, local)
        self.model = LlamaShard(self.arena, kernels)
        self.bind(tp, local, rank - local)

    def _peer_arenas(self) -> PeerArenas | None:
        """Every device's arena address, if every device may read every other's (the kernel may
        forbid it); all devices agree, since a move's source does nothing when its destination reads."""
        pages = self.arena.pages
        everyone = [None] * self.spec.world_size
        dist.all_gather_object(everyone, (os.getpid(), pages.data_ptr()))
        stride = pages.stride(0) * pages.element_size()
        ok = all(peer_reads.can_read(pid, base, stride) for r, (pid, base) in enumerate(everyone) if r != self.rank)
        agreed = torch.tensor([int(ok)])
        dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        return PeerArenas([p for p, _ in everyone], [b for _, b in everyone], stride) if agreed.item() else None

    def load_weights(self, tp: int, rank: int):
        """Read the model from disk and write rank `rank`'s shard at TP `tp` into the arena."""
        dtype = self.arena.pages.dtype
        weights = {name: t.to(dtype) for name, t in iter_weights(Path(self.spec.model_path), self.config)}
        self.arena.load(weights, head_groups(self.spec.max_tp, tp, rank))

    def bind(self, tp: int, rank: int, group_start: int):
        """Serve as rank `rank` of the TP-`tp` instance on the aligned group starting at `group_start`."""
        self.model.bind(tp, rank, self.groups.get((group_start, tp)), self.comms.get((group_start, tp)))

    def transform(self, kv_moves: list, weight_moves: list, tp: int, rank: int, group_start: int,
                  involved: tuple[int, int]) -> dict:
        """This device's part of a merge or split: KV units first (they vacate pages the weights
        need), then weight slabs, then serve at the new degree. `involved`: (start, size) of the
        aligned group of every device taking part; they start together so the timings are the moves'."""
        rss_before = reset_peak_rss()  # before the barrier: /proc I/O after it staggers the starts
        self.barrier(involved)
        t0 = time.perf_counter()
        kv_sent = run_moves(self.arena.pages, self.rank, kv_moves, self.peers)
        t1 = time.perf_counter()
        if self.fault == "transform":
            raise RuntimeError("injected fault after the KV moves")
        # weight slabs start when every device's KV is out: they would otherwise share the links
        # with the KV still in flight, and the KV phase would not be measured alone. Every device
        # takes this barrier, weight moves of its own or not (its peers cannot know).
        self.barrier(involved)
        t2 = time.perf_counter()
        weight_sent = run_moves(self.arena.pages, self.rank, weight_moves, self.peers)
        t3 = time.perf_counter()
        self.barrier(involved)  # peers may still be reading this device's pages; a step would overwrite them
        self.bind(tp, rank, group_start)
        peak = peak_rss()
        return {"kv_bytes_sent": kv_sent, "kv_s": t1 - t0, "weight_bytes_sent": weight_sent, "weight_s": t3 - t2,
                "peak_extra_bytes": None if rss_before is None or peak is None else max(0, peak - rss_before)}

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

    def step(self, s: StepInput):
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
            return [], None, None
        logits = logits.cpu()
        tokens = sample(logits, s.samples)
        return tokens, (logits.numpy() if s.want_logits else None), token_logprobs(logits, s.samples, tokens)

    def copy_pages(self, moves: list) -> int:
        """Pre-copy: move page runs while still serving at the current degree."""
        return run_moves(self.arena.pages, self.rank, moves, self.peers)

    def invoke(self, fn, *args):
        """Run a module-level `fn(worker, *args)` here: how benchmarks measure alternatives in place."""
        return fn(self, *args)

    def info(self) -> dict:
        lay = self.arena.layout
        return {"num_pages": lay.num_pages, "page_bytes": lay.page_bytes, "pid": os.getpid(),
                "peer_reads": self.peers is not None}


def worker_main(rank: int, spec: WorkerSpec, conn):
    try:
        worker = Worker(rank, spec)
        conn.send(("ok", worker.info()))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            cmd, args = conn.recv()
        except EOFError:
            return
        if cmd == "shutdown":
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", getattr(worker, cmd)(*args)))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
