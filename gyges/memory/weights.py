"""Cut full HF weights into the padded finest shards that the weight slabs hold (pure)."""
import torch

from gyges.memory.layout import HeadPadding
from gyges.model.config import ModelConfig


def pad_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    """Zero rows appended: padded heads and MLP channels contribute nothing."""
    if w.shape[0] == rows:
        return w
    return torch.cat([w, w.new_zeros(rows - w.shape[0], *w.shape[1:])])


def layer_shards(config: ModelConfig, pad: HeadPadding, w: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """One layer's sharded matrices, `max_tp` finest shards each.

    `w` holds the layer's HF tensors by short name (q_proj.weight, ...). Column-parallel parts are
    output-major and q/k/v (gate/up) are interleaved per shard. Row-parallel parts (o, down) are
    cut along their input and each piece is stored output-major too, so every matmul is a plain
    `F.linear`: on CPU in bf16 that is faster than multiplying by an input-major matrix
    (measured: docs/benchmarks.md, 'Measurements behind code choices').
    """
    d, n = config.head_dim, pad.max_tp
    q = pad_rows(w["q_proj.weight"], pad.num_heads * d).chunk(n)
    k = pad_rows(w["k_proj.weight"], pad.num_kv_heads * d).chunk(n)
    v = pad_rows(w["v_proj.weight"], pad.num_kv_heads * d).chunk(n)
    gate = pad_rows(w["gate_proj.weight"], pad.intermediate_size).chunk(n)
    up = pad_rows(w["up_proj.weight"], pad.intermediate_size).chunk(n)
    out = {
        "qkv": [torch.cat(parts) for parts in zip(q, k, v)],
        "o": [c.t() for c in pad_rows(w["o_proj.weight"].t(), pad.num_heads * d).chunk(n)],
        "gate_up": [torch.cat(parts) for parts in zip(gate, up)],
        "down": [c.t() for c in pad_rows(w["down_proj.weight"].t(), pad.intermediate_size).chunk(n)],
    }
    if config.qkv_bias:
        qb = pad_rows(w["q_proj.bias"], pad.num_heads * d).chunk(n)
        kb = pad_rows(w["k_proj.bias"], pad.num_kv_heads * d).chunk(n)
        vb = pad_rows(w["v_proj.bias"], pad.num_kv_heads * d).chunk(n)
        out["qkv_bias"] = [torch.cat(parts) for parts in zip(qb, kb, vb)]
    return out


def layer_names(names) -> list[dict[str, str]]:
    """Per layer, short name (after `layers.i.`) -> HF name: names only, so a caller can read one
    layer's tensors at a time."""
    layers = {}
    for name in names:
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            layers.setdefault(int(i), {})[rest.split(".", 1)[1] if rest.startswith(("self_attn.", "mlp.")) else rest] = name
    return [layers[i] for i in sorted(layers)]
