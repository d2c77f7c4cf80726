"""Request traces: the ones shipped in `gyges/data` by name, or any Mooncake JSONL / Azure CSV file
by path (plain, .gz or .xz), as one list of plain requests for the client and the simulator."""
import csv
import gzip
import io
import json
import lzma
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
TRACES = {"mooncake-conversation": "mooncake-conversation.jsonl.xz",
          "azure-code": "azure-code.csv.xz",
          "azure-conversation": "azure-conversation.csv.xz"}
HASH_BLOCK_TOKENS = 512  # Mooncake's hash_ids name blocks of this many prompt tokens


@dataclass(frozen=True)
class TraceRequest:
    arrival_s: float  # seconds after the trace's first request
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...] = ()  # one id per HASH_BLOCK_TOKENS prompt tokens; equal ids, equal prefix


def trace_path(name_or_path: str | Path) -> Path:
    """A shipped trace's file for its name, else the path itself."""
    if str(name_or_path) in TRACES:
        return DATA_DIR / TRACES[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"no trace {str(name_or_path)!r}: neither a file nor one of {sorted(TRACES)}")
    return path


def _open_text(path: Path) -> io.TextIOBase:
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8", newline="")


def _format(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".xz", ".gz")]
    if suffixes and suffixes[-1] in (".jsonl", ".csv"):
        return suffixes[-1]
    raise ValueError(f"{path}: unknown trace format; expected .jsonl (Mooncake) or .csv (Azure), optionally .gz/.xz")


def _length(value, what: str, where: str, minimum: int) -> int:
    n = int(value)
    if n < minimum:
        raise ValueError(f"{where}: {what} {n} < {minimum}")
    return n


def parse_mooncake(lines) -> list[TraceRequest]:
    """Mooncake JSONL: `timestamp` (ms), `input_length`, `output_length`, optional `hash_ids`."""
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {i}"
        try:
            row = json.loads(line)
            hash_ids = tuple(int(h) for h in row.get("hash_ids", ()))
            req = TraceRequest(float(row["timestamp"]) / 1000.0, _length(row["input_length"], "input_length", where, 1),
                               _length(row["output_length"], "output_length", where, 1), hash_ids)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: not a Mooncake trace record ({e!r})") from None
        if any(h < 0 for h in hash_ids):
            raise ValueError(f"{where}: negative hash id")
        if hash_ids and len(hash_ids) * HASH_BLOCK_TOKENS < req.input_len:
            raise ValueError(f"{where}: {len(hash_ids)} hash_ids cover fewer than input_length {req.input_len} tokens")
        out.append(req)
    return _relative(out)


def parse_azure(lines) -> list[TraceRequest]:
    """Azure LLM inference CSV: `TIMESTAMP` (wall clock), `ContextTokens`, `GeneratedTokens`."""
    reader = csv.DictReader(lines)
    missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(f"not an Azure trace: missing columns {sorted(missing)}")
    out = []
    for i, row in enumerate(reader, 2):
        where = f"line {i}"
        try:
            t = datetime.fromisoformat(row["TIMESTAMP"]).replace(tzinfo=timezone.utc).timestamp()
            out.append(TraceRequest(t, _length(row["ContextTokens"], "ContextTokens", where, 1),
                                    _length(row["GeneratedTokens"], "GeneratedTokens", where, 1)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: not an Azure trace record ({e})") from None
    return _relative(out)


def _relative(reqs: list[TraceRequest]) -> list[TraceRequest]:
    """Sorted by arrival (stable), times counted from the first request."""
    if not reqs:
        raise ValueError("empty trace")
    reqs = sorted(reqs, key=lambda r: r.arrival_s)
    t0 = reqs[0].arrival_s
    return [TraceRequest(r.arrival_s - t0, r.input_len, r.output_len, r.hash_ids) for r in reqs]


def load_trace(name_or_path: str | Path) -> list[TraceRequest]:
    """Requests of a shipped trace (see TRACES) or of a trace file, in arrival order."""
    path = trace_path(name_or_path)
    parse = parse_mooncake if _format(path) == ".jsonl" else parse_azure
    with _open_text(path) as f:
        try:
            return parse(f)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def write_trace(reqs: list[TraceRequest], path: str | Path):
    """Requests as a Mooncake JSONL file (`timestamp` in ms), which `load_trace` and `gyges bench` read."""
    with open(path, "w") as f:
        for r in reqs:
            f.write(json.dumps({"timestamp": round(r.arrival_s * 1000, 3), "input_length": r.input_len,
                                "output_length": r.output_len, **({"hash_ids": list(r.hash_ids)} if r.hash_ids else {})})
                    + "\n")
