"""Model architecture facts, read from an HF `config.json` or GGUF metadata."""
import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
SUPPORTED_ROPE = ("default", "linear", "llama3")


class ModelError(ValueError):
    """A model that is missing, malformed or of an architecture Gyges does not run."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    rope_scaling: dict = field(default_factory=dict)
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ModelError(f"{self.num_heads} query heads do not divide into {self.num_kv_heads} KV heads")
        rope_type = self.rope_scaling.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE:
            raise ModelError(f"RoPE scaling {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE)})")

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf(cls, path: str | Path) -> "ModelConfig":
        path = Path(path) / "config.json"
        if not path.exists():
            raise ModelError(f"{path.parent} has no config.json")
        c = json.loads(path.read_text())
        archs = c.get("architectures") or []
        arch = next((SUPPORTED_ARCHITECTURES[a] for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ModelError(f"architecture {archs or c.get('model_type')} is not supported "
                             f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
        rope_theta = rope.pop("rope_theta", c.get("rope_theta", 10000.0))
        if "type" in rope:
            rope.setdefault("rope_type", rope.pop("type"))
        eos = c.get("eos_token_id")
        window = c.get("sliding_window") if (arch == "mistral" or c.get("use_sliding_window")) else None
        return cls(
            arch=arch, vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
            num_heads=c["num_attention_heads"], num_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
            head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
            rms_norm_eps=c.get("rms_norm_eps", 1e-6), rope_theta=float(rope_theta),
            max_position_embeddings=c.get("max_position_embeddings", 4096),
            tie_word_embeddings=c.get("tie_word_embeddings", False), qkv_bias=arch == "qwen2",
            rope_scaling=rope, sliding_window=window, bos_token_id=c.get("bos_token_id"),
            eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
        )

    @classmethod
    def from_gguf(cls, fields: dict, tensor_names: set[str]) -> "ModelConfig":
        """`fields` maps GGUF metadata keys to their decoded values."""
        gguf_arch = fields.get("general.architecture")
        if gguf_arch not in GGUF_ARCHITECTURES:
            raise ModelError(f"GGUF architecture {gguf_arch!r} is not supported (supported: {', '.join(GGUF_ARCHITECTURES)})")
        a = gguf_arch
        heads = fields[f"{a}.attention.head_count"]
        hidden = fields[f"{a}.embedding_length"]
        rope = {}
        if fields.get(f"{a}.rope.scaling.type", "none") not in ("none", None):
            if fields[f"{a}.rope.scaling.type"] != "linear":
                raise ModelError(f"GGUF RoPE scaling {fields[f'{a}.rope.scaling.type']!r} is not supported")
            rope = {"rope_type": "linear", "factor": fields[f"{a}.rope.scaling.factor"]}
        return cls(
            arch=GGUF_ARCHITECTURES[a], vocab_size=fields.get(f"{a}.vocab_size") or len(fields["tokenizer.ggml.tokens"]),
            hidden_size=hidden, intermediate_size=fields[f"{a}.feed_forward_length"],
            num_layers=fields[f"{a}.block_count"], num_heads=heads,
            num_kv_heads=fields.get(f"{a}.attention.head_count_kv", heads),
            head_dim=fields.get(f"{a}.attention.key_length", hidden // heads),
            rms_norm_eps=fields[f"{a}.attention.layer_norm_rms_epsilon"],
            rope_theta=float(fields.get(f"{a}.rope.freq_base", 10000.0)),
            max_position_embeddings=fields.get(f"{a}.context_length", 4096),
            tie_word_embeddings="output.weight" not in tensor_names, qkv_bias="blk.0.attn_q.bias" in tensor_names,
            rope_scaling=rope, bos_token_id=fields.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=tuple(x for x in [fields.get("tokenizer.ggml.eos_token_id")] if x is not None),
        )
