"""A rank's shard of one weight matrix, multiplied as one matrix whatever its number of pieces.

At TP t < max_tp the shard is m = max_tp / t finest pieces a weight slab apart (layout.py), some
of them partly or wholly padding. Only the real rows (column-parallel) or inputs (row-parallel),
`layout.real_runs`, are computed, in the order of the unpadded matrix: a TP1 shard of SmolLM2
laid out for max_tp 4 computes 9 query heads, not 12, and returns what an unpadded TP1 model does.
Packed (bf16 C kernel): one call through the kernel's block tables. PyTorch: one batched matmul
over the pieces holding real rows, then the real columns copied out in order (column), or the
real inputs scattered in and the pieces' partial sums added (row).
"""
import torch
import torch.nn.functional as F

from gyges.kernels import packed
from gyges.memory.layout import Run, run_rows


def _indices(runs: list[Run], piece_rows: int) -> torch.Tensor:
    """Positions of the runs' rows in the pieces seen end to end."""
    return torch.cat([torch.arange(r.start, r.stop) + r.piece * piece_rows for r in runs])


def _whole(runs: list[Run], pieces: int, piece_rows: int) -> bool:
    """The runs are every row of the first `pieces` pieces, in order."""
    return [(r.piece, r.start, r.stop) for r in runs] == [(j, 0, piece_rows) for j in range(pieces)]


class ColumnShard:
    def __init__(self, pieces: torch.Tensor, runs: list[Run], bias: torch.Tensor | None = None):
        """pieces: [m, N, K], or [m, N/16, K/2, 16, 2] packed; bias: [m, N] or None."""
        self.pieces, self.runs, self.rows = pieces, runs, run_rows(runs)
        self.packed = pieces.dim() == 5
        n = pieces.shape[1] * (16 if self.packed else 1)
        self.used = max((r.piece for r in runs), default=-1) + 1
        self.bias = None if bias is None or not runs else bias.flatten()[_indices(runs, n)]  # small: copied
        if self.packed:
            self.tables = packed.column_tables(pieces, runs)
        else:
            self.single = _whole(runs, 1, n)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, K] -> [T, rows of the runs]."""
        if not self.runs:
            return x.new_empty(x.shape[0], 0)
        if self.packed:
            return packed.linear_tables(x, self.pieces, *self.tables, self.bias)
        if self.single:
            return F.linear(x, self.pieces[0], self.bias)
        y = torch.matmul(x, self.pieces[:self.used].transpose(1, 2))  # [used, T, N]
        # the runs' columns in order, one copy: gathering columns of [T, used * N] (index_select on
        # dim 1) slowed prefill a lot (measured: docs/benchmarks.md, 'Measurements behind code choices')
        y = torch.cat([y[r.piece, :, r.start:r.stop] for r in self.runs], 1)
        return y if self.bias is None else y.add_(self.bias)


class RowShard:
    def __init__(self, pieces: torch.Tensor, runs: list[Run]):
        """pieces: [m, N, K] (each the piece's slice of the input), or [m, N/16, K/2, 16, 2] packed."""
        self.pieces, self.runs = pieces, runs
        self.packed = pieces.dim() == 5
        self.out = pieces.shape[1] * (16 if self.packed else 1)
        k = pieces.shape[2] * (2 if self.packed else 1)
        self.used = max((r.piece for r in runs), default=-1) + 1
        if self.packed:
            self.tables = packed.row_tables(pieces, runs)
        else:
            self.whole = _whole(runs, self.used, k)
            self.index = None if self.whole or not runs else _indices(runs, k)
            self.k = k

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, inputs of the runs] -> this rank's partial sum [T, N]."""
        T = x.shape[0]
        if not self.runs:
            return x.new_zeros(T, self.out)
        if self.packed:
            return packed.linear_tables(x, self.pieces, *self.tables)
        if self.used == 1 and self.whole:
            return F.linear(x, self.pieces[0])
        if not self.whole:  # zeros where the pieces' inputs are padding
            x = x.new_zeros(T, self.used * self.k).index_copy_(1, self.index, x)
        parts = x.view(T, self.used, self.k).transpose(0, 1)
        return torch.bmm(parts, self.pieces[:self.used].transpose(1, 2)).sum(0)
