"""The controller: worker processes, instances with their schedulers, and the serving loop."""
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from gyges.cluster.config import ClusterConfig
from gyges.engine.batch import build_step
from gyges.engine.kv_pool import DevicePages, KVPool
from gyges.engine.scheduler import ScheduledBatch, Scheduler
from gyges.engine.sequence import SamplingParams, Sequence, Status
from gyges.kernels import shm_allreduce
from gyges.memory.layout import ALIGN_ELEMS, DeviceLayout, device_layout, pad_to, units_per_block
from gyges.model.config import ModelError
from gyges.model.loader import load_config, load_tokenizer, resolve_model
from gyges.transform import coordinator
from gyges.transform.coordinator import TransformReport
from gyges.transform.plan import TransformError, kv_page_order
from gyges.worker.handle import WorkerError, WorkerHandle, recv_all, spawn_context
from gyges.worker.worker import DTYPES, WorkerSpec, aligned_groups

LOAD_TIMEOUT_S = 600
MAX_RECOVERIES = 3


@dataclass
class Instance:
    devices: list[int]
    scheduler: Scheduler

    @property
    def tp(self) -> int:
        return len(self.devices)


@dataclass
class Output:
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
    error: str | None = None
    logits: list[np.ndarray] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eos_ids(path, config, tokenizer) -> set[int]:
    ids = set(config.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    gen = path / "generation_config.json" if path.is_dir() else None
    if gen is not None and gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return ids


class Cluster:
    def __init__(self, cfg: ClusterConfig, record_logits: bool = False):
        self.cfg = cfg
        self.record_logits = record_logits
        self.path = resolve_model(cfg.model)
        self.model_config = load_config(self.path)
        self.tokenizer = load_tokenizer(self.path)
        self.eos_ids = _eos_ids(self.path, self.model_config, self.tokenizer)
        self.layout: DeviceLayout = device_layout(self.model_config, cfg.max_tp, cfg.block_tokens,
                                                  DTYPES[cfg.dtype].itemsize, cfg.memory_bytes)
        need = self.layout.min_pages(cfg.tp) + units_per_block(cfg.max_tp, cfg.tp)
        if need > self.layout.num_pages:
            raise ModelError(f"the model needs at least {need * self.layout.page_bytes / 2**20:.0f} MiB per device "
                             f"at TP {cfg.tp} (weights plus one KV block); --device-memory gives "
                             f"{cfg.memory_bytes / 2**20:.0f} MiB")
        self.logits: dict[int, list[np.ndarray]] = {}
        self.transition: coordinator.Transition | None = None
        self.reports: list[TransformReport] = []
        self.failures: list[str] = []
        self._start_workers()

    def _start_workers(self):
        """Spawn every worker, wait until all have loaded, and lay out the initial instances."""
        cfg = self.cfg
        port = _free_port()
        groups = aligned_groups(cfg.devices, cfg.max_tp)
        prefix = f"gyges-{os.getpid()}-{port}"
        # an all-reduce carries at most [max_batched_tokens or max_num_seqs, hidden] of fp32
        slot_bytes = pad_to(max(cfg.max_batched_tokens, cfg.max_num_seqs) * self.model_config.hidden_size * 4,
                            ALIGN_ELEMS)
        shm = cfg.device_type == "cpu" and shm_allreduce.create_segments(prefix, groups, slot_bytes)
        spec = WorkerSpec(str(self.path), cfg.dtype, cfg.device_type, cfg.memory_bytes, cfg.max_tp,
                          cfg.block_tokens, cfg.devices, port, cfg.threads_per_device, cfg.tp,
                          cfg.cpu_kernels, prefix if shm else None, slot_bytes, cfg.peer_reads)
        ctx = spawn_context()
        self.workers = [WorkerHandle(ctx, r, spec) for r in range(cfg.devices)]
        try:
            self.worker_info = recv_all(self.workers, timeout=LOAD_TIMEOUT_S)
        except WorkerError:
            self.shutdown()
            raise
        finally:
            shm_allreduce.remove_segments(prefix, groups)  # the workers keep their mappings
        self.instances = [self._make_instance(list(range(s, s + cfg.tp))) for s in range(0, cfg.devices, cfg.tp)]

    def _make_instance(self, devices: list[int], free: dict[int, list[int]] | None = None) -> Instance:
        """An instance on `devices` (rank order); `free`: each device's free KV pages (default: all)."""
        tp = len(devices)
        pages = [DevicePages(kv_page_order(self.layout, self.layout.free_pages(tp, r) if free is None else free[d]),
                             self.layout.kv_capacity(tp)) for r, d in enumerate(devices)]
        pool = KVPool(pages, self.cfg.max_tp, self.cfg.block_tokens)
        return Instance(devices, Scheduler(pool, self.cfg.max_num_seqs, self.cfg.max_batched_tokens))

    # requests

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None) -> Sequence:
        params = params or SamplingParams()
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else list(prompt)
        limit = self.model_config.max_position_embeddings
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) + params.max_tokens > limit:
            raise ValueError(f"the prompt has {len(ids)} tokens and asks for {params.max_tokens} more; "
                             f"the model's context is {limit} tokens")
        if max(ids) >= self.model_config.vocab_size or min(ids) < 0:
            raise ValueError(f"prompt token ids must lie in [0, {self.model_config.vocab_size})")
        seq = Sequence(ids, params)
        self._route(seq)
        return seq

    def _route(self, seq: Sequence):
        inst = max(self.instances, key=lambda i: (i.scheduler.pool.free_blocks * i.tp, -i.scheduler.load_tokens))
        inst.scheduler.add(seq)

    @property
    def has_work(self) -> bool:
        return self.transition is not None or any(i.scheduler.has_work for i in self.instances)

    # the loop

    def step(self) -> list[tuple[Sequence, int | None]]:
        """One step of every instance with work; returns (sequence, new token or None when it failed).

        If a worker fails or dies, the workers restart and every request is re-queued with its
        prompt and generated tokens (see `_recover`).
        """
        try:
            return self._step()
        except WorkerError as e:
            self._recover(f"worker failure: {e}")
            return []

    def _step(self) -> list[tuple[Sequence, int | None]]:
        tr = self.transition
        if tr is not None and tr.done:
            self.transition = None
            self._advance_transition(tr.switch)
        elif tr is not None:
            # the chunk goes before the decode, so this step's tokens are not held back by it
            self._advance_transition(tr.advance)
        launched, events = [], []
        for inst in self.instances:
            batch = inst.scheduler.schedule()
            for seq in batch.failed:
                inst.scheduler.finish(seq, "error")
                events.append((seq, None))
            if not batch:
                continue
            m = units_per_block(self.cfg.max_tp, inst.tp)
            for r, dev in enumerate(inst.devices):
                self.workers[dev].send("step", build_step(batch.seqs, batch.num_tokens, r, m, self.cfg.block_tokens,
                                                          want_logits=self.record_logits and r == 0))
            launched.append((inst, batch))
        for inst, batch in launched:
            answers = recv_all([self.workers[d] for d in inst.devices])
            events += self._apply(inst, batch, *answers[0])
        return events

    def _advance_transition(self, phase):
        """Run a phase of the pending transition; a failure is recorded, never raised from a step."""
        try:
            report = self._guarded(lambda _: phase())
        except TransformError as e:
            self.failures.append(f"transformation abandoned: {e}")
            return
        if report is not None:
            self.reports.append(report)

    def _recover(self, reason: str) -> int:
        """Restart every worker and re-queue every request from its prompt and generated tokens.

        Used when a worker fails: process groups that lost a peer cannot be trusted again, and a
        transformation that failed part-way may have overwritten pages a request needed. Seeded
        sampling makes the resumed requests produce what they would have. After MAX_RECOVERIES,
        or if the restart fails, every request is finished with the reason and WorkerError raised.
        """
        seqs = sorted((s for i in self.instances for s in i.scheduler.requests), key=lambda s: s.id)
        self.failures.append(reason)
        self.transition = None
        self.shutdown()
        if len(self.failures) > MAX_RECOVERIES:
            self._fail_all(f"{reason} (gave up after {MAX_RECOVERIES} restarts)")
            raise WorkerError(reason)
        try:
            self._start_workers()
        except WorkerError as e:
            self._fail_all(f"{reason}; restart failed: {e}")
            raise
        for seq in seqs:
            seq.pages, seq.num_computed, seq.status = [], 0, Status.WAITING
            self._route(seq)
        return len(seqs)

    def _fail_all(self, reason: str):
        for inst in self.instances:
            for seq in inst.scheduler.requests:
                seq.error = reason
                inst.scheduler.finish(seq, "error")

    def _apply(self, inst: Instance, batch: ScheduledBatch, tokens: list[int], logits, logprobs=None) -> list:
        events, k = [], 0
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_computed += n
            if seq.num_computed < seq.num_tokens:
                continue
            tok = tokens[k]
            if logits is not None:
                self.logits.setdefault(seq.id, []).append(logits[k])
            k += 1
            seq.output_ids.append(tok)
            events.append((seq, tok))
            self._check_stop(inst, seq, tok)
        return events

    def _check_stop(self, inst: Instance, seq: Sequence, tok: int):
        p = seq.params
        if (tok in self.eos_ids and not p.ignore_eos) or tok in p.stop_token_ids:
            inst.scheduler.finish(seq, "stop")
        elif p.stop:
            text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
            hit = min((text.find(s) for s in p.stop if s in text), default=-1)
            if hit >= 0:
                seq.text = text[:hit]
                inst.scheduler.finish(seq, "stop")
        if not seq.finished and len(seq.output_ids) >= p.max_tokens:
            inst.scheduler.finish(seq, "length")

    def text_of(self, seq: Sequence) -> str:
        if seq.finish_reason == "stop" and seq.params.stop and seq.text:
            return seq.text
        return self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)

    def generate(self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool = False, on_token: Callable[[Sequence, int], None] | None = None) -> list[Output]:
        params = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        seqs = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        bar = tqdm(total=len(seqs), desc="generate", disable=not progress, unit="req")
        while self.has_work:
            for seq, tok in self.step():
                if tok is not None and on_token:
                    on_token(seq, tok)
                if seq.finished and seq in seqs:
                    bar.update(1)
        bar.close()
        return [Output(s.prompt_ids, s.output_ids, self.text_of(s) if not s.error else "", s.finish_reason,
                       s.error, self.logits.pop(s.id, [])) for s in seqs]

    # transformation

    def instance_of(self, device: int) -> Instance:
        return next(i for i in self.instances if device in i.devices)

    def merge(self, devices: list[int], precopy: bool = False) -> TransformReport | coordinator.Transition:
        """Merge the instances that together hold exactly `devices` into one; requests keep running.

        With `precopy`, returns the pending Transition: following steps pre-copy KV while decoding,
        and the switch happens at the start of the step after the last chunk (see `reports`).
        """
        self._no_pending_transition()
        insts = []
        for d in sorted(devices):
            inst = self.instance_of(d)
            if inst not in insts:
                insts.append(inst)
        if sorted(d for i in insts for d in i.devices) != sorted(devices):
            raise TransformError(f"devices {sorted(devices)} do not cover whole instances "
                                 f"({[i.devices for i in insts]})")
        if precopy:
            return self._begin("merge", insts)
        return self._guarded(coordinator.merge, insts)

    def split(self, device: int, parts: int = 2, precopy: bool = False) -> TransformReport | coordinator.Transition:
        """Split the instance holding `device` into `parts` instances; each request goes to one."""
        self._no_pending_transition()
        if precopy:
            return self._begin("split", [self.instance_of(device)], parts)
        return self._guarded(coordinator.split, self.instance_of(device), parts)

    def _no_pending_transition(self):
        if self.transition is not None:
            raise TransformError("a transformation is already in progress; let it finish first")

    def _begin(self, *args) -> coordinator.Transition:
        self.transition = self._guarded(coordinator.Transition, *args)
        return self.transition

    def _guarded(self, fn, *args):
        try:
            return fn(self, *args)
        except WorkerError as e:
            n = self._recover(f"worker failure during a transformation: {e}")
            raise TransformError(f"the transformation failed ({str(e).splitlines()[0]}); workers restarted "
                                 f"at TP {self.cfg.tp} and {n} requests re-queued with their generated tokens") from e

    def shutdown(self):
        """Stop every worker; all are asked first, so stuck ones cost one timeout, not one each."""
        workers = getattr(self, "workers", [])
        for w in workers:
            w.ask_to_stop()
        deadline = time.monotonic() + 5.0
        for w in workers:
            w.stop(max(0.0, deadline - time.monotonic()))
        self.workers = []

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc):
        self.shutdown()
