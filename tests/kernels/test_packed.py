"""The packed bf16 matmul against an fp32 reference rounded to bf16."""
import pytest
import torch

from gyges.kernels import packed
from gyges.kernels.build import library
from gyges.memory.layout import Run

pytestmark = pytest.mark.skipif(library() is None, reason="needs gcc and a CPU with AVX512-BF16")


def reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    y = x.float() @ w.float().t()
    return y if bias is None else y + bias.float()


def assert_bf16_rounding_of(y: torch.Tensor, ref: torch.Tensor, x: torch.Tensor, w: torch.Tensor):
    """Within one bf16 step of the exact result, plus fp32 summation-order slack."""
    slack = 1e-5 * (x.float().abs() @ w.float().abs().t())
    assert ((y.float() - ref).abs() <= ref.abs() * 2**-8 + slack).all()


def test_pack_round_trips_and_looks_up_rows():
    w = torch.randn(48, 10).bfloat16()
    p = packed.pack(w)
    assert p.shape == (3, 5, 16, 2) and p.numel() == w.numel()
    assert torch.equal(packed.rows(p, torch.arange(48)), w)
    ids = torch.tensor([0, 17, 47, 17])
    assert torch.equal(packed.rows(p, ids), w[ids])


@pytest.mark.parametrize("m, n, k", [(1, 16, 2), (3, 48, 64), (8, 32, 576), (13, 80, 130), (40, 960, 576)])
def test_linear_matches_fp32_reference(m, n, k):
    torch.manual_seed(m * n + k)
    x, w = torch.randn(m, k).bfloat16(), torch.randn(n, k).bfloat16()
    assert_bf16_rounding_of(packed.linear(x, packed.pack(w)), reference(x, w), x, w)


def test_linear_with_bias_strided_rows_and_out():
    torch.manual_seed(1)
    big = torch.randn(9, 200).bfloat16()
    x = big[:, 8:72]  # rows 200 elements apart
    w, b = torch.randn(64, 64).bfloat16(), torch.randn(64).bfloat16()
    out = torch.full((2, 9, 64), 7.0).bfloat16()
    y = packed.linear(x, packed.pack(w), b, out=out[1])
    assert y.data_ptr() == out[1].data_ptr()
    assert_bf16_rounding_of(out[1], reference(x, w, b), x, w)
    assert (out[0] == 7).all()


def test_available_only_for_bf16_on_cpu():
    assert packed.available(torch.device("cpu"), torch.bfloat16)
    assert not packed.available(torch.device("cpu"), torch.float32)
    assert not packed.packable((20, 8)) and not packed.packable((16, 7)) and packed.packable((32, 8))


def test_one_call_walks_pieces_and_skips_padding():
    """Three pieces a slab apart, the third all padding and the second half padding: the column
    tables give the real rows of every piece in one call, the row tables the sum over real inputs."""
    torch.manual_seed(2)
    m, n, k, slab = 3, 32, 64, 4096
    storage = torch.randn(m * slab).bfloat16()
    full = [torch.randn(n, k).bfloat16() for _ in range(m)]
    for j, w in enumerate(full):
        storage[j * slab:j * slab + n * k] = packed.pack(w).flatten()
    pieces = storage.as_strided((m, n // 16, k // 2, 16, 2), (slab, k // 2 * 32, 32, 2, 1))
    x = torch.randn(5, k).bfloat16()
    runs = [Run(0, 0, 32), Run(1, 0, 16)]
    y = packed.linear_tables(x, pieces, *packed.column_tables(pieces, runs))
    w = torch.cat([full[0], full[1][:16]])
    assert_bf16_rounding_of(y, reference(x, w), x, w)
    runs = [Run(0, 0, 64), Run(1, 0, 30)]
    xr = torch.randn(5, 94).bfloat16()
    y = packed.linear_tables(xr, pieces, *packed.row_tables(pieces, runs))
    w = torch.cat([full[0], full[1][:, :30]], 1)
    assert_bf16_rounding_of(y, reference(xr, w), xr, w)
