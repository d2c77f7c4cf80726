"""The elementwise steps of a Llama layer in one C pass each (elementwise_bf16.c), for bf16 on CPU.

At decode batch sizes these steps are a few microseconds of work behind tens of microseconds of
PyTorch dispatch: RMSNorm alone is five ops in HF's rounding order.
"""
import torch

from gyges.kernels.build import library


def usable(*widths: int) -> bool:
    return all(w % 16 == 0 for w in widths) and library() is not None


def residual_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x += delta (in place, when given); returns RMSNorm(x) * weight. x, delta: [T, h] contiguous bf16."""
    out = torch.empty_like(x)
    if delta is not None:
        delta = delta.contiguous()
    library().residual_rms_norm_bf16(x.data_ptr(), None if delta is None else delta.data_ptr(), weight.data_ptr(),
                                     eps, out.data_ptr(), x.shape[0], x.shape[1])
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[..., 2 * inter] holding gate then up -> silu(gate) * up, [..., inter]."""
    gate_up = gate_up.contiguous()
    width = gate_up.shape[-1] // 2
    out = gate_up.new_empty(*gate_up.shape[:-1], width)
    library().silu_mul_bf16(gate_up.data_ptr(), out.data_ptr(), gate_up.numel() // (2 * width), width)
    return out


def rope_write_kv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor,
                  kv_rows: torch.Tensor, q_heads: int) -> torch.Tensor:
    """Rotary on this step's q and k, k and v written into their KV rows; returns q [T, m * q_heads, d].

    qkv: [m, T, q_heads + 2 * kv_heads, d] contiguous; cos, sin: rope.py's [T, 1, d]; rows: one
    layer's [2, T * m * kv_heads] from `AttentionMeta.slot_rows`; kv_rows: the KV tensor as [rows, d].
    Head dims must be multiples of 32."""
    m, T, heads, d = qkv.shape
    kv_heads = (heads - q_heads) // 2
    q = qkv.new_empty(T, m * q_heads, d)
    library().rope_write_kv_bf16(qkv.data_ptr(), T, m, q_heads, kv_heads, d, cos.contiguous().data_ptr(),
                                 sin.contiguous().data_ptr(), rows.contiguous().data_ptr(), kv_rows.data_ptr(),
                                 q.data_ptr())
    return q
