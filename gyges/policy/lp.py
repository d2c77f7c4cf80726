"""How much of a mix of work a set of instances serves per second, when each kind of instance serves
each kind of work at its own rate: a small linear program, solved exactly by the simplex method
(Bland's rule, so it never cycles). The planner asks it a few times per re-plan, each time with at
most a few dozen variables: a dense tableau in numpy is enough, and keeps SciPy out."""
import numpy as np

EPS = 1e-12


def simplex_max(c: np.ndarray, a: np.ndarray, b: np.ndarray, max_pivots: int = 10_000) -> tuple[float, np.ndarray]:
    """Maximize c @ x subject to a @ x <= b, x >= 0, for b >= 0 (the origin is feasible). Returns the
    optimum and x; (inf, x) when unbounded."""
    m, n = a.shape
    if np.any(b < 0):
        raise ValueError("simplex_max needs b >= 0")
    t = np.zeros((m + 1, n + m + 1))
    t[:m, :n], t[:m, n:n + m], t[:m, -1] = a, np.eye(m), b
    t[-1, :n] = -c
    basis = list(range(n, n + m))
    for _ in range(max_pivots):
        entering = np.flatnonzero(t[-1, :-1] < -EPS)
        if not len(entering):
            break
        col = int(entering[0])  # Bland: the lowest index that improves
        rows = np.flatnonzero(t[:m, col] > EPS)
        if not len(rows):
            return float("inf"), _solution(t, basis, n)
        ratios = t[rows, -1] / t[rows, col]
        best = ratios.min()
        ties = rows[ratios <= best + EPS * max(1.0, abs(best))]
        row = int(min(ties, key=lambda r: basis[r]))  # Bland: the lowest basic index leaves
        t[row] /= t[row, col]
        others = np.arange(m + 1) != row
        t[others] -= np.outer(t[others, col], t[row])
        basis[row] = col
    else:
        raise RuntimeError("simplex_max: no optimum within the pivot limit")
    return float(t[-1, -1]), _solution(t, basis, n)


def _solution(t: np.ndarray, basis: list[int], n: int) -> np.ndarray:
    x = np.zeros(n)
    for row, var in enumerate(basis):
        if var < n:
            x[var] = t[row, -1]
    return x


def served_fraction(rates: np.ndarray, work: np.ndarray, counts: np.ndarray) -> tuple[float, np.ndarray]:
    """The largest λ such that λ * work[c] of each kind of work c is served per second by counts[k]
    instances of each kind k, an instance of kind k serving work c at rates[c, k] per second (0: it
    cannot serve c at all); and the share of each kind of work each kind of instance takes then
    ([c, k], rows summing to 1). λ is 0 when some work no instance can serve."""
    rates, work, counts = (np.asarray(x, dtype=float) for x in (rates, work, counts))
    live = work > 0
    if not live.any():
        return float("inf"), np.zeros_like(rates)
    if np.any(live & ~(rates > 0).any(axis=1)):
        return 0.0, np.zeros_like(rates)
    pairs = [(c, k) for c in np.flatnonzero(live) for k in range(rates.shape[1]) if rates[c, k] > 0]
    n = len(pairs) + 1  # y[c, k] (work c served by kind k per second), then λ
    classes, kinds = np.flatnonzero(live), rates.shape[1]
    a = np.zeros((kinds + len(classes), n))
    for j, (c, k) in enumerate(pairs):
        a[k, j] = 1.0 / rates[c, k]                              # kind k's instances are busy at most counts[k]
        a[kinds + int(np.flatnonzero(classes == c)[0]), j] = -1.0  # λ * work[c] <= what is served of c
    a[kinds:, -1] = work[classes]
    b = np.concatenate([counts, np.zeros(len(classes))])
    cost = np.zeros(n)
    cost[-1] = 1.0
    lam, x = simplex_max(cost, a, b)
    share = np.zeros_like(rates)
    for j, (c, k) in enumerate(pairs):
        share[c, k] = x[j] / (lam * work[c]) if lam > 0 else 0.0
    return lam, share
