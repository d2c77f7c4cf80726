"""Resident memory of this process, with a resettable peak (Linux `clear_refs`), to check that a
transformation needs nothing beyond the arena."""
from pathlib import Path


def _status_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> int | None:
    """Reset the peak to the current RSS; returns the current RSS, or None where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_bytes("VmRSS")


def peak_rss() -> int | None:
    return _status_bytes("VmHWM")
