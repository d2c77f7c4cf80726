"""bf16 matmuls on weights packed once, at load, in the arena (CPUs with AVX512-BF16).

`F.linear` in bf16 on CPU hands the weight to oneDNN, which re-packs it on every call: at decode
batch sizes that costs as much as the multiply. Here a weight [N, K] is stored as
[N/16, K/2, 16, 2], the operand order of the AVX512-BF16 dot product, and multiplied in place by a
small C kernel (gemm_bf16.c). The packed form has the same number of elements as [N, K], so pages,
slabs and transformations do not change; only the order inside a weight's slot does.
"""
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


def linear(x: torch.Tensor, p: torch.Tensor, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [T, K] bf16 (rows may be strided); p: packed [N/16, K/2, 16, 2] -> [T, N] (into `out`)."""
    nb, k2 = p.shape[:2]
    if x.stride(-1) != 1:
        x = x.contiguous()
    if out is None:
        out = torch.empty(x.shape[0], nb * 16, dtype=x.dtype, device=x.device)
    if x.shape[0]:
        library().gemm_bf16_packed(x.data_ptr(), x.stride(0), p.data_ptr(),
                                    None if bias is None else bias.data_ptr(), out.data_ptr(), out.stride(0),
                                    x.shape[0], nb * 16, k2 * 2)
    return out
