"""The fused elementwise kernels round where HF's Llama rounds: bit-exact against the PyTorch ops."""
import pytest
import torch
import torch.nn.functional as F

from gyges.kernels import fused
from gyges.kernels.build import library
from gyges.model.llama import rms_norm

pytestmark = pytest.mark.skipif(library() is None, reason="needs gcc and a CPU with AVX512-BF16")


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
