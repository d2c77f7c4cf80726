"""How long an instance's step takes for the tokens it computes, learned from its own steps, and the
token budget that keeps a step carrying decodes within a TPOT target (Sarathi-Serve's stall-free
batching, with the budget measured instead of profiled offline)."""
from dataclasses import dataclass

MIN_STEPS = 8  # steps seen, at two or more token counts, before the fit is trusted


@dataclass
class StepTimeFit:
    """seconds = a + b * tokens, least squares with older steps weighted down by `decay` per step,
    so the fit follows the machine's load and the batches' context lengths."""
    decay: float = 0.97
    n: int = 0
    w: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    x_lo: int = 0
    x_hi: int = 0

    def observe(self, tokens: int, seconds: float, steps: int = 1):
        """`steps` alike steps of `tokens` each, `seconds` each (a simulator's stretch of decodes)."""
        d = self.decay ** steps
        k = (1 - d) / (1 - self.decay)  # the weight of `steps` steps, the latest weighing 1
        self.w, self.sx, self.sy = d * self.w + k, d * self.sx + k * tokens, d * self.sy + k * seconds
        self.sxx, self.sxy = d * self.sxx + k * tokens * tokens, d * self.sxy + k * tokens * seconds
        self.x_lo, self.x_hi = (tokens, tokens) if self.n == 0 else (min(self.x_lo, tokens), max(self.x_hi, tokens))
        self.n += steps

    def line(self) -> tuple[float, float] | None:
        """(a, b), or None while too few steps, or steps of one size only, were seen."""
        var = self.sxx * self.w - self.sx * self.sx
        if self.n < MIN_STEPS or self.x_hi == self.x_lo or var <= 1e-9 * self.w * self.w:
            return None
        b = (self.sxy * self.w - self.sx * self.sy) / var
        a = (self.sy - b * self.sx) / self.w
        return (a, b) if b > 0 else None

    def tokens_within(self, seconds: float) -> int | None:
        """The most tokens a step may compute and be predicted to end within `seconds`; None: no fit yet."""
        line = self.line()
        if line is None:
            return None
        a, b = line
        return max(0, int((seconds - a) / b))


def prefill_budget(step_tokens: int | None, decodes: int, budget: int, min_prefill: int) -> int:
    """Prompt tokens a step may add beside `decodes` decoding requests: what keeps the step within
    `step_tokens` (None: no target, or no fit yet), never less than `min_prefill` so prompts always
    progress, never more than the step's remaining `budget`."""
    if step_tokens is None or decodes == 0:
        return budget
    return min(budget, max(min_prefill, step_tokens - decodes))
