"""A cluster of worker processes under one controller, driven from the caller's thread: for
scripts, tests and benchmarks (`generate`, lockstep `step`, manual `merge`/`split`). The server
runs the same controller in a thread of its own (gyges/cluster/serving.py).

Stop strings are the front end's: tokens are detokenized here, in the caller's thread after the
controller's pass, and a match aborts the request in the controller at once."""
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gyges.cluster.config import ClusterConfig
from gyges.cluster.controller import Controller, ControllerConfig, OutputSink
from gyges.cluster.instance import Instance
from gyges.cluster.transitions import TransformRecord
from gyges.engine.admission import Limits, admit
from gyges.engine.detokenizer import IncrementalDetokenizer
from gyges.engine.sequence import SamplingParams, Sequence
from gyges.memory.layout import ALIGN_ELEMS, DeviceLayout, device_layout, pad_to, units_per_block
from gyges.model.config import ModelConfig, ModelError
from gyges.model.loader import load_config, load_tokenizer, resolve_model
from gyges.policy.policy import StaticPolicy
from gyges.transform.coordinator import TransformReport, Transition
from gyges.worker.executor import HostConfig, LocalExecutor
from gyges.worker.worker import DTYPES, Worker, WorkerSpec


@dataclass
class Output:
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
    error: str | None = None
    logits: list[np.ndarray] = field(default_factory=list)


def _eos_ids(path: Path, config: ModelConfig, tokenizer) -> set[int]:
    ids = set(config.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    gen = path / "generation_config.json" if path.is_dir() else None
    if gen is not None and gen.exists():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    return ids


@dataclass
class ServedModel:
    """The model a cluster serves, read once: its files, configuration, tokenizer and EOS ids, and the
    layout of weights and KV in each device's memory."""
    path: Path
    config: ModelConfig
    tokenizer: object
    eos_ids: set[int]
    layout: DeviceLayout

    @classmethod
    def load(cls, cfg: ClusterConfig) -> "ServedModel":
        path = resolve_model(cfg.model)
        config = load_config(path)
        tokenizer = load_tokenizer(path)
        layout = device_layout(config, cfg.max_tp, cfg.block_tokens, DTYPES[cfg.dtype].itemsize, cfg.memory_bytes)
        smallest = min(cfg.sizes)
        need = layout.min_pages(smallest) + units_per_block(cfg.max_tp, smallest)
        if need > layout.num_pages:
            raise ModelError(f"the model needs at least {need * layout.page_bytes / 2**20:.0f} MiB per device "
                             f"at TP {smallest} (weights plus one KV block); --device-memory gives "
                             f"{cfg.memory_bytes / 2**20:.0f} MiB")
        return cls(path, config, tokenizer, _eos_ids(path, config, tokenizer), layout)


def host_config(cfg: ClusterConfig, model: ServedModel, record_logits: bool = False) -> HostConfig:
    spec = WorkerSpec(str(model.path), cfg.dtype, cfg.device_type, cfg.memory_bytes, cfg.max_tp, cfg.block_tokens,
                      cfg.devices, cfg.threads_per_device, cfg.cpu_kernels, cfg.peer_reads)
    # an all-reduce carries at most [max_batched_tokens or max_num_seqs, hidden] of fp32
    allreduce = pad_to(max(cfg.max_batched_tokens, cfg.max_num_seqs) * model.config.hidden_size * 4, ALIGN_ELEMS)
    return HostConfig(spec, allreduce, frozenset(model.eos_ids), record_logits)


@dataclass
class _Front:
    """The caller's view of one request added here: its stop strings and what it returned so far."""
    seq: Sequence
    detok: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    stopped: bool = False


class Cluster:
    """`worker_class`: a Worker subclass that declares more commands (tests, benchmarks).
    `on_output`: every token event of every request, from the controller's loop (the serving cluster's
    way out); requests added here through `add_request` are also followed for `generate`."""

    def __init__(self, cfg: ClusterConfig, record_logits: bool = False, policy=None,
                 on_output: OutputSink | None = None, worker_class: type[Worker] = Worker,
                 model: ServedModel | None = None, on_transform: Callable[[TransformRecord], None] | None = None):
        self.cfg, self.record_logits = cfg, record_logits
        self.model = model or ServedModel.load(cfg)
        self.tokenizer, self.model_config, self.eos_ids = self.model.tokenizer, self.model.config, self.model.eos_ids
        self.layout = self.model.layout
        self.executor = LocalExecutor(host_config(cfg, self.model, record_logits), worker_class)
        self._sink = on_output
        self._front: dict[int, _Front] = {}
        self._new: list[tuple[_Front, list[int]]] = []  # tokens the front end has not looked at yet
        backend = self.executor.start(cfg.sizes)
        ccfg = ControllerConfig(cfg.max_tp, cfg.block_tokens, cfg.max_num_seqs, cfg.max_batched_tokens,
                                long_prefill_tokens=cfg.long_prefill_tokens, tpot_target_s=cfg.target_tpot_ms / 1e3)
        self.controller = Controller(backend, self.layout, ccfg, policy or StaticPolicy(), self.eos_ids, cfg.sizes,
                                     self._on_output, self.executor.restart, on_transform)

    # what callers read

    @property
    def workers(self):
        return self.executor.workers

    @property
    def worker_info(self):
        return self.executor.info

    @property
    def instances(self) -> list[Instance]:
        return self.controller.instances.all

    @property
    def transition(self) -> Transition | None:
        p = self.controller.transitions.pending
        return None if p is None else p.transition

    @property
    def reports(self) -> list[TransformReport]:
        return [r.report for r in self.controller.transitions.history]

    @property
    def failures(self) -> list[str]:
        return [reason for _, reason in self.controller.recovery.failures]

    @property
    def has_work(self) -> bool:
        return self.controller.has_work

    def instance_of(self, device: int) -> Instance:
        return self.controller.instances.of(device)

    def limits(self) -> Limits:
        tokens, why = self.controller.kv_limit
        return Limits(self.model_config.vocab_size, self.model_config.max_position_embeddings, tokens, why)

    # requests

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None) -> Sequence:
        """Queue a request (routed at once, as callers of this lockstep API expect); RequestError
        (a ValueError) says what is wrong if the model or the cluster cannot take it."""
        params = params or SamplingParams()
        ids = self.tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else list(prompt)
        seq = admit(ids, params, self.limits())
        detok = IncrementalDetokenizer(self.tokenizer, ids, params.stop, params.skip_special_tokens) if params.stop else None
        self._front[seq.id] = _Front(seq, detok)
        self.controller.submit(seq)
        self.controller.take_inbox()
        return seq

    def _on_output(self, seq: Sequence, tokens: list[int], logprobs, logits):
        front = self._front.get(seq.id)
        if front is not None and tokens:
            self._new.append((front, tokens))
            if logits is not None:
                front.logits.append(logits)
        if self._sink is not None:
            self._sink(seq, tokens, logprobs, logits)

    def _follow(self, on_token: Callable[[Sequence, int], None] | None = None):
        """The front end's pass over new tokens (outside the controller's loop): stop strings end
        their request, and the tokens after a match are dropped."""
        new, self._new = self._new, []
        for front, tokens in new:
            if front.stopped:
                continue
            if front.detok is not None:
                before = front.detok.used
                front.detok.add(tokens)
                tokens = tokens[:front.detok.used - before]
                if front.detok.stopped:
                    front.stopped = True
                    self.controller.abort(front.seq.id)
            front.token_ids += tokens
            if on_token is not None:
                for t in tokens:
                    on_token(front.seq, t)

    def output(self, seq: Sequence) -> Output:
        """What the caller gets for a request added here: text and tokens up to a stop string."""
        front = self._front[seq.id]
        if front.stopped:
            return Output(seq.prompt_ids, front.token_ids, front.detok.text, "stop", None, front.logits)
        text = "" if seq.error else self.tokenizer.decode(front.token_ids, skip_special_tokens=seq.params.skip_special_tokens)
        return Output(seq.prompt_ids, front.token_ids, text, seq.finish_reason, seq.error, front.logits)

    def done(self, seq: Sequence) -> bool:
        return seq.finished or self._front[seq.id].stopped

    # the loop, from the caller's thread

    def step(self):
        """One step of every instance with work, in lockstep (a pending transition's chunk or
        switch first). On a worker failure the workers restart and every request is re-queued."""
        self.controller.step_all()
        self._follow()

    def generate(self, prompts: list[str | list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool = False, on_token: Callable[[Sequence, int], None] | None = None) -> list[Output]:
        """Every prompt to its end, instances stepping independently; `on_token(seq, token)` as they come."""
        params = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        seqs = [self.add_request(p, sp) for p, sp in zip(prompts, params)]
        bar = tqdm(total=len(seqs), desc="generate", disable=not progress, unit="req")
        done = 0
        while not all(s.finished for s in seqs):
            self.controller.run_once()
            self._follow(on_token)
            if progress:
                n = sum(self.done(s) for s in seqs)
                bar.update(n - done)
                done = n
        bar.close()
        outs = [self.output(s) for s in seqs]
        for s in seqs:
            del self._front[s.id]
        return outs

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
        self.executor.shutdown()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc):
        self.shutdown()
