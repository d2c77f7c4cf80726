"""The C decode attention against the PyTorch path run in fp32 on the same bf16 pages."""
import pytest
import torch

from gyges.kernels.build import library
from gyges.kernels.paged_decode import decode_attention, usable
from gyges.layers.attention import AttentionMeta, _decode

pytestmark = pytest.mark.skipif(library() is None, reason="needs gcc and a CPU with AVX512-BF16")


@pytest.mark.parametrize("nd, ctx, m, heads, group, window, real", [
    (32, 70, 1, 3, 3, None, 3),  # SmolLM2's shape: 9 query heads on 3 KV heads
    (5, 33, 2, 2, 4, None, 4),   # two head groups per rank (TP below max_tp)
    (5, 33, 2, 2, 4, None, 3),   # ... the last KV head padding: neither read nor computed
    (6, 20, 4, 1, 3, None, 3),   # SmolLM2 at TP1 of max_tp 4: the fourth group is padding
    (4, 100, 1, 1, 8, 40, 1),    # sliding window
    (3, 1, 1, 2, 1, None, 2),    # first token: one key
])
def test_decode_kernel_matches_fp32_attention(nd, ctx, m, heads, group, window, real):
    torch.manual_seed(nd + ctx)
    block, d = 16, 64
    blocks = -(-ctx // block)
    pages = nd * m * blocks + 3
    cache = torch.randn(pages, 2, heads, block, d).bfloat16()
    tables = (torch.randperm(pages - 3)[:nd * m * blocks] + 3).view(nd, m, blocks)  # scattered pages
    lens = torch.randint(1, ctx + 1, (nd,))
    lens[0] = ctx
    meta = AttentionMeta(torch.zeros(0, m, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.arange(nd),
                         tables, lens, [], block, window)
    q = torch.randn(nd, real * group, d).bfloat16()
    ref = _decode(cache.float(), meta, q.float(), d ** -0.5, real)
    assert usable(cache, heads * group)
    out = decode_attention(cache, q, tables, lens, window, d ** -0.5, real)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    # the output is rounded to bf16 once; nothing else is
    assert ((out.float() - ref).abs() <= ref.abs() * 2**-8 + 1e-3).all()


def test_not_usable_for_fp32_or_odd_head_dim():
    assert not usable(torch.zeros(2, 2, 1, 4, 64), 3)
    assert not usable(torch.zeros(2, 2, 1, 4, 40).bfloat16(), 3)
