"""A cluster of worker processes under one controller, driven from the caller's thread: for
scripts, tests and benchmarks (`generate`, lockstep `step`, manual `merge`/`split`). The server
runs the same controller in a thread of its own (gyges/cluster/engine.py)."""
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from gyges.cluster.backend import WorkerBackend
from gyges.cluster.config import ClusterConfig
from gyges.cluster.controller import Controller, ControllerConfig, Instance
from gyges.engine.sequence import SamplingParams, Sequence
from gyges.kernels import shm_allreduce
from gyges.memory.layout import ALIGN_ELEMS, DeviceLayout, device_layout, pad_to, units_per_block
from gyges.model.config import ModelError
from gyges.model.loader import load_config, load_tokenizer, resolve_model
from gyges.policy.policy import StaticPolicy
from gyges.transform.coordinator import TransformReport, Transition
from gyges.transform.plan import TransformError
from gyges.worker.handle import WorkerError, WorkerHandle, log_fallbacks, recv_all, spawn_context
from gyges.worker.worker import DTYPES, WorkerSpec, aligned_groups

LOAD_TIMEOUT_S = 600
log = logging.getLogger("gyges")


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
    def __init__(self, cfg: ClusterConfig, record_logits: bool = False, policy=None,
                 on_output: Callable[[Sequence, list[int], list | None], None] | None = None):
        self.cfg = cfg
        self.record_logits = record_logits
        self.path = resolve_model(cfg.model)
        self.model_config = load_config(self.path)
        self.tokenizer = load_tokenizer(self.path)
        self.eos_ids = _eos_ids(self.path, self.model_config, self.tokenizer)
        self.layout: DeviceLayout = device_layout(self.model_config, cfg.max_tp, cfg.block_tokens,
                                                  DTYPES[cfg.dtype].itemsize, cfg.memory_bytes)
        smallest = min(cfg.sizes)
        need = self.layout.min_pages(smallest) + units_per_block(cfg.max_tp, smallest)
        if need > self.layout.num_pages:
            raise ModelError(f"the model needs at least {need * self.layout.page_bytes / 2**20:.0f} MiB per device "
                             f"at TP {smallest} (weights plus one KV block); --device-memory gives "
                             f"{cfg.memory_bytes / 2**20:.0f} MiB")
        self.workers: list[WorkerHandle] = []
        self._sink, self._on_token = on_output, None
        backend = self._start_workers(cfg.sizes)
        log_fallbacks(self.worker_info)
        ccfg = ControllerConfig(cfg.max_tp, cfg.block_tokens, cfg.max_num_seqs, cfg.max_batched_tokens,
                                long_prefill_tokens=cfg.long_prefill_tokens, tpot_target_s=cfg.target_tpot_ms / 1e3,
                                record_logits=record_logits)
        self.controller = Controller(backend, self.layout, ccfg, policy or StaticPolicy(), self.eos_ids, cfg.sizes,
                                     self._on_output, self._restart, self._stop_string_hit)

    def _start_workers(self, sizes: list[int]) -> WorkerBackend:
        """Spawn every worker laid out as `sizes`, wait until all have loaded."""
        cfg = self.cfg
        port = _free_port()
        groups = aligned_groups(cfg.devices, cfg.max_tp)
        prefix = shm_allreduce.segment_prefix()
        # an all-reduce carries at most [max_batched_tokens or max_num_seqs, hidden] of fp32
        slot_bytes = pad_to(max(cfg.max_batched_tokens, cfg.max_num_seqs) * self.model_config.hidden_size * 4,
                            ALIGN_ELEMS)
        shm = cfg.device_type == "cpu" and shm_allreduce.create_segments(prefix, groups, slot_bytes)
        spec = WorkerSpec(str(self.path), cfg.dtype, cfg.device_type, cfg.memory_bytes, cfg.max_tp,
                          cfg.block_tokens, cfg.devices, port, cfg.threads_per_device, tuple(sizes),
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
        return WorkerBackend(self.workers, cfg.max_tp, cfg.block_tokens, self.record_logits, self.eos_ids)

    def _restart(self, sizes: list[int]) -> WorkerBackend:
        """After a failure: every worker stops and starts again, laid out as `sizes` (process groups
        that lost a peer cannot be trusted again, so all of them restart)."""
        self.shutdown()
        return self._start_workers(sizes)

    # what callers read

    @property
    def instances(self) -> list[Instance]:
        return self.controller.instances

    @property
    def transition(self) -> Transition | None:
        p = self.controller.pending
        return None if p is None else p.transition

    @property
    def reports(self) -> list[TransformReport]:
        return [r.report for r in self.controller.history]

    @property
    def failures(self) -> list[str]:
        return [reason for _, reason in self.controller.failures]

    @property
    def logits(self) -> dict[int, list[np.ndarray]]:
        return self.controller.logits

    @property
    def has_work(self) -> bool:
        return self.controller.has_work

    def instance_of(self, device: int) -> Instance:
        return self.controller.instance_of(device)

    # requests

    def validate(self, prompt: str | list[int], params: SamplingParams) -> list[int]:
        """The prompt's token ids; ValueError with what is wrong if the model cannot take it."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else list(prompt)
        limit = self.model_config.max_position_embeddings
        if not ids:
            raise ValueError("the prompt is empty")
        if params.max_tokens is not None and len(ids) + params.max_tokens > limit:
            raise ValueError(f"the prompt has {len(ids)} tokens and asks for {params.max_tokens} more; "
                             f"the model's context is {limit} tokens")
        if max(ids) >= self.model_config.vocab_size or min(ids) < 0:
            raise ValueError(f"prompt token ids must lie in [0, {self.model_config.vocab_size})")
        return ids

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None) -> Sequence:
        params = params or SamplingParams()
        seq = Sequence(self.validate(prompt, params), params)
        self.controller.submit(seq)
        self.controller._drain()  # routed now, as callers of this lockstep API expect
        return seq

    def _on_output(self, seq: Sequence, tokens: list[int], logprobs):
        if self._on_token is not None:
            for t in tokens:
                self._on_token(seq, t)
        if self._sink is not None:
            self._sink(seq, tokens, logprobs)

    def _stop_string_hit(self, seq: Sequence) -> bool:
        if not seq.params.stop:
            return False
        text = self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
        hit = min((text.find(s) for s in seq.params.stop if s in text), default=-1)
        if hit >= 0:
            seq.text = text[:hit]
        return hit >= 0

    def text_of(self, seq: Sequence) -> str:
        if seq.finish_reason == "stop" and seq.params.stop and seq.text:
            return seq.text
        return self.tokenizer.decode(seq.output_ids, skip_special_tokens=True)

    # the loop, from the caller's thread

    def step(self):
        """One step of every instance with work, in lockstep (a pending transition's chunk or
        switch first). On a worker failure the workers restart and every request is re-queued."""
        self.controller.step_all()

    def generate(self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool = False, on_token: Callable[[Sequence, int], None] | None = None) -> list[Output]:
        """Every prompt to its end, instances stepping independently; `on_token(seq, token)` as they come."""
        params = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        self._on_token = on_token
        seqs = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        bar = tqdm(total=len(seqs), desc="generate", disable=not progress, unit="req")
        done = 0
        while not all(s.finished for s in seqs):
            self.controller.run_once()
            if progress:
                n = sum(s.finished for s in seqs)
                bar.update(n - done)
                done = n
        bar.close()
        self._on_token = None
        return [Output(s.prompt_ids, s.output_ids, self.text_of(s) if not s.error else "", s.finish_reason,
                       s.error, self.logits.pop(s.id, [])) for s in seqs]

    # transformation

    def merge(self, devices: list[int], precopy: bool = False) -> TransformReport | Transition:
        """Merge the instances that together hold exactly `devices` into one; requests keep running.

        With `precopy`, returns the pending Transition: following steps pre-copy KV while decoding,
        and the switch happens at the start of the step after the last chunk (see `reports`).
        """
        return self._transform("merge", devices, 0, precopy)

    def split(self, device: int, parts: int = 2, precopy: bool = False) -> TransformReport | Transition:
        """Split the instance holding `device` into `parts` instances; each request goes to one."""
        return self._transform("split", [device], parts, precopy)

    def _transform(self, kind: str, devices: list[int], parts: int, precopy: bool):
        c = self.controller
        pending = c.start_transform(kind, devices, parts, "operator", precopy)
        if precopy:
            return pending.transition
        c.finish_transition()
        return pending.future.result(timeout=0)

    def shutdown(self):
        """Stop every worker; all are asked first, so stuck ones cost one timeout, not one each."""
        for w in self.workers:
            w.ask_to_stop()
        deadline = time.monotonic() + 5.0
        for w in self.workers:
            w.stop(max(0.0, deadline - time.monotonic()))
        self.workers = []

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc):
        self.shutdown()
