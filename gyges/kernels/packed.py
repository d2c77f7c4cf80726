"""bf16 matmuls on weights packed once, at load, in the arena (CPUs with AVX512-BF16).

`F.linear` in bf16 on CPU hands the weight to oneDNN, which re-packs it on every call: at decode
batch sizes that costs as much as the multiply. Here a weight [N, K] is stored as
[N/16, K/2, 16, 2], the operand order of the AVX512-BF16 dot product, and multiplied in place by a
small C kernel (gemm_bf16.c). The packed form has the same number of elements as [N, K], so pages,
slabs and transformations do not change; only the order inside a weight's slot does.
"""
import functools

import torch

from gyges.kernels.build import library


def packable(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and shape[0] % 16 == 0 and shape[1] % 2 == 0


def pack(w: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [N/16, K/2, 16, 2]."""
    n, k = w.shape
    return w.reshape(n // 16, 16, k // 2, 2).permute(0, 2, 1, 3).contiguous()


def rows(p: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` of the packed matrix as [len(ids), K]: an embedding lookup."""
    return p[ids // 16, :, ids % 16].reshape(len(ids), -1)


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype == torch.bfloat16 and library() is not None


@functools.cache
def _plain_tables(nb: int, k2: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(nb) * (k2 * 32), torch.arange(k2) * 32


def column_tables(pieces: torch.Tensor, runs) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables (gemm_bf16.c) for the output rows `runs` (layout.Run, multiples of 16) of packed
    pieces [m, N/16, K/2, 16, 2] lying pieces.stride(0) apart: one call computes them all, in order."""
    k2 = pieces.shape[2]
    wn = [r.piece * pieces.stride(0) + b * k2 * 32 for r in runs for b in range(r.start // 16, r.stop // 16)]
    return torch.tensor(wn, dtype=torch.int64), torch.arange(k2) * 32


def row_tables(pieces: torch.Tensor, runs) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables for the input columns `runs` (even bounds) of packed pieces [m, N/16, K/2, 16, 2]:
    one call sums the partial products of every piece."""
    nb, k2 = pieces.shape[1:3]
    wk = [r.piece * pieces.stride(0) + i * 32 for r in runs for i in range(r.start // 2, r.stop // 2)]
    return torch.arange(nb) * (k2 * 32), torch.tensor(wk, dtype=torch.int64)


def linear_tables(x: torch.Tensor, w: torch.Tensor, wn: torch.Tensor, wk: torch.Tensor,
                  bias: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [T, len(wk) * 2] bf16 (rows may be strided) -> [T, len(wn) * 16]; the weight's blocks lie
    at w.data_ptr() + the tables' offsets (gemm_bf16.c)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if out is None:
        out = torch.empty(x.shape[0], len(wn) * 16, dtype=x.dtype, device=x.device)
    if x.shape[0]:
        library().gemm_bf16_packed(x.data_ptr(), x.stride(0), w.data_ptr(), wn.data_ptr(), wk.data_ptr(),
                                    None if bias is None else bias.data_ptr(), out.data_ptr(), out.stride(0),
                                    x.shape[0], len(wn) * 16, len(wk) * 2)
    return out


def linear(x: torch.Tensor, p: torch.Tensor, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [T, K] bf16 (rows may be strided); p: packed [N/16, K/2, 16, 2] -> [T, N] (into `out`)."""
    return linear_tables(x, p, *_plain_tables(*p.shape[:2]), bias, out)
