"""The fused elementwise kernels round where HF's Llama rounds: bit-exact against the PyTorch ops."""
import pytest
import torch
import torch.nn.functional as F

from gyges.kernels import fused
from gyges.kernels.build import library
from gyges.layers.llama import rms_norm
from gyges.layers.rope import apply_rotary

pytestmark = pytest.mark.skipif(library() is None, reason="needs gcc and a CPU with AVX512-BF16")


def heads_major(x: torch.Tensor) -> torch.Tensor:
    """[m, T, heads, d] (one block per head group) -> [T, m * heads, d]."""
    return x.transpose(0, 1).reshape(x.shape[1], -1, x.shape[3])


@pytest.mark.parametrize("rows", [1, 5, 33])
def test_residual_rms_norm_is_bit_exact(rows):
    torch.manual_seed(rows)
    x, delta, w = torch.randn(rows, 576).bfloat16(), torch.randn(rows, 576).bfloat16(), torch.randn(576).bfloat16()
    x_ref = x + delta
    h = fused.residual_rms_norm(x, delta, w, 1e-5)
    assert torch.equal(x, x_ref)  # the residual stream is updated in place
    assert torch.equal(h, rms_norm(x_ref, w, 1e-5))
    assert torch.equal(fused.residual_rms_norm(x.clone(), None, w, 1e-5), rms_norm(x, w, 1e-5))


def test_silu_mul_is_bit_exact_over_shards():
    torch.manual_seed(0)
    gate_up = torch.randn(2, 9, 2 * 384).bfloat16() * 4  # [m, T, gate | up]
    gate, up = gate_up.chunk(2, dim=-1)
    assert torch.equal(fused.silu_mul(gate_up), F.silu(gate) * up)


def test_usable_needs_widths_of_16():
    assert fused.usable(576, 1536) and not fused.usable(576, 1540)


@pytest.mark.parametrize("m, T, q_heads, kv_heads, d", [(1, 5, 3, 1, 64), (2, 33, 2, 1, 32), (1, 1, 9, 3, 64)])
def test_rope_write_kv_is_bit_exact(m, T, q_heads, kv_heads, d):
    """Rotary in HF's rounding order, and k, v landing in exactly the rows the PyTorch path writes."""
    torch.manual_seed(T)
    qkv = torch.randn(m, T, q_heads + 2 * kv_heads, d).bfloat16()
    freqs = torch.randint(0, 500, (T,)).float()[:, None] / (10000 ** (torch.arange(0, d, 2).float() / d))
    cos = torch.cat([freqs.cos(), freqs.cos()], -1)[:, None].bfloat16()
    sin = torch.cat([-freqs.sin(), freqs.sin()], -1)[:, None].bfloat16()
    n = T * m * kv_heads
    kv = torch.zeros(4 * n, d).bfloat16()
    rows = torch.randperm(4 * n)[:2 * n].view(2, n)
    q = fused.rope_write_kv(qkv, cos, sin, rows, kv, q_heads)
    qk = apply_rotary(qkv[:, :, :q_heads + kv_heads], cos, sin)
    assert torch.equal(q, heads_major(qk[:, :, :q_heads]))
    assert torch.equal(kv[rows[0]], heads_major(qk[:, :, q_heads:]).reshape(-1, d))
    assert torch.equal(kv[rows[1]], heads_major(qkv[:, :, q_heads + kv_heads:]).reshape(-1, d))
    assert kv.count_nonzero() == 2 * n * d - (kv[rows.flatten()] == 0).sum()  # nothing else written
