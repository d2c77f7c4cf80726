"""Static layouts for the baselines: the aligned instance sizes each host of devices is cut into."""


def aligned(sizes: tuple[int, ...]) -> list[list[int]]:
    """Device lists (host-relative) of instances of `sizes`, largest first, so each starts at a
    multiple of its size (a buddy layout)."""
    if any(s < 1 or s & (s - 1) for s in sizes):
        raise ValueError(f"instance sizes must be powers of two, got {sizes}")
    out, start = [], 0
    for s in sorted(sizes, reverse=True):
        out.append(list(range(start, start + s)))
        start += s
    return out


def partitions(n: int, largest: int) -> list[tuple[int, ...]]:
    """Every way to write n as a non-increasing sum of powers of two no larger than `largest`."""
    if n == 0:
        return [()]
    out, s = [], largest
    while s >= 1:
        if s <= n:
            out += [(s, *rest) for rest in partitions(n - s, s)]
        s //= 2
    return out


def candidates(host_devices: int, max_tp: int, limit: int = 10) -> dict[str, tuple[int, ...]]:
    """Up to `limit` per-host layouts by name: every uniform TP degree first, then mixes."""
    parts = partitions(host_devices, min(max_tp, host_devices))
    uniform = [p for p in parts if len(set(p)) == 1]
    mixes = [p for p in parts if len(set(p)) > 1]
    return {name(p): p for p in (sorted(uniform) + mixes)[:limit]}


def name(sizes: tuple[int, ...]) -> str:
    if len(set(sizes)) == 1:
        return f"static-tp{sizes[0]}"
    return "static-" + "+".join(map(str, sizes))
