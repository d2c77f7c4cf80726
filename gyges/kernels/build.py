"""Compile the C kernels once per source version into the user's cache and load them.

They need gcc, a CPU with AVX512-BF16 and a writable cache folder; where any is missing `library()`
is None, `unavailable_reason()` says why, and the engine runs its PyTorch path instead.
"""
import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
SOURCES = [HERE / "gemm_bf16.c", HERE / "decode_attention_bf16.c", HERE / "elementwise_bf16.c", HERE / "shm_allreduce.c"]
HEADERS = [HERE / "bf16_common.h"]
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mfma", "-fopenmp", "-shared", "-fPIC"]
I64, PTR = ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {
    "gemm_bf16_packed": [PTR, I64, PTR, PTR, PTR, PTR, PTR, I64, I64, I64, I64],
    "decode_attention_bf16": [PTR, I64, PTR, I64, I64, I64, I64, PTR, I64, I64, PTR, I64, I64, I64, ctypes.c_float,
                              PTR, I64],
    "residual_rms_norm_bf16": [PTR, PTR, PTR, ctypes.c_float, PTR, I64, I64],
    "silu_mul_bf16": [PTR, PTR, I64, I64],
    "rope_write_kv_bf16": [PTR, I64, I64, I64, I64, I64, PTR, PTR, PTR, PTR, PTR],
    "shm_all_reduce": [PTR, I64, I64, I64, I64, PTR, I64, I64, ctypes.c_double],
}
RESTYPES = {"shm_all_reduce": ctypes.c_int}


def _cpu_has_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def default_cpu_dtype() -> str:
    """bf16 where the CPU computes it natively (the C kernels need AVX512-BF16), else fp32: the
    PyTorch bf16 path without it is several times slower than fp32."""
    return "bfloat16" if _cpu_has_bf16() else "float32"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gyges"


def compile_kernels(cache: Path) -> tuple[ctypes.CDLL | None, str]:
    """The compiled library (built into `cache` unless there already), or None and why not."""
    digest = hashlib.sha1(" ".join(FLAGS).encode())
    for src in SOURCES + HEADERS:
        digest.update(src.read_bytes())
    lib = cache / f"kernels-{digest.hexdigest()[:12]}.so"
    if not lib.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                out = Path(tmp) / lib.name
                subprocess.run(["gcc", *FLAGS, *map(str, SOURCES), "-o", str(out)], check=True, capture_output=True)
                os.replace(out, lib)  # atomic: workers that build at once all load a whole file
        except FileNotFoundError as e:
            return None, f"cannot compile the C kernels: {e.filename} not found"
        except subprocess.CalledProcessError as e:
            return None, f"gcc failed on the C kernels: {e.stderr.decode(errors='replace').strip()[-500:]}"
        except OSError as e:
            return None, f"cannot write the C kernels' cache folder {cache}: {e.strerror}"
    try:
        dll = ctypes.CDLL(str(lib))
    except OSError as e:
        return None, f"cannot load {lib}: {e}"
    for name, args in SIGNATURES.items():
        fn = getattr(dll, name)
        fn.argtypes, fn.restype = args, RESTYPES.get(name)
    return dll, ""


@functools.cache
def _loaded() -> tuple[ctypes.CDLL | None, str]:
    if not _cpu_has_bf16():
        return None, "this CPU has no AVX512-BF16"
    return compile_kernels(cache_dir())


def library() -> ctypes.CDLL | None:
    return _loaded()[0]


def unavailable_reason() -> str:
    """Why `library()` is None ("" when it is not): for the start-up log and the cluster's report."""
    return _loaded()[1]
