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
