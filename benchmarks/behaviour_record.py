"""Record what a restructuring must not change, and compare two recordings.

`record OUT.json`: the headline `gyges simulate --compare` (Mooncake first 120 s, 8 x H100,
Qwen2.5-32B; every policy's max rate at the SLO and its figures) and the token ids of the merge/split
reference run (tests/transform/test_coordinator.py's first test: 8 requests through 4xTP1 -> TP2s ->
TP4 -> back, over peer reads and over gloo). `compare A.json B.json`: equal except wall-clock fields.
Record before a change, again after it, compare (a few minutes in all)."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WALL = {"wall_s"}
SIM = ["simulate", "--trace", "mooncake-conversation", "--gpus", "8", "--gpu", "h100", "--model", "qwen2.5-32b",
       "--compare", "--duration", "120"]
SCHEDULE = {3: ("merge", [0, 1]), 6: ("merge", [2, 3]), 9: ("merge", [0, 1, 2, 3]), 13: ("split", 0),
            17: ("split", 0), 20: ("split", 2)}


def merge_split_tokens(peer_reads: bool) -> dict:
    from gyges.cluster.cluster import Cluster
    from gyges.cluster.config import ClusterConfig
    from gyges.engine.sequence import SamplingParams
    from tests.conftest import make_tiny_model
    path = make_tiny_model(tempfile.mkdtemp(), "llama")
    prompts = [[(i * 13 + j * 7) % 500 + 3 for j in range(5 + i * 9)] for i in range(8)]
    cfg = ClusterConfig(model=str(path), devices=4, tp=1, max_tp=4, dtype="float32", device_memory="32MiB",
                        block_tokens=4, max_batched_tokens=32, peer_reads=peer_reads)
    shapes = []
    with Cluster(cfg) as c:
        seqs = [c.add_request(p, SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)) for p in prompts]
        step = 0
        while c.has_work:
            c.step()
            step += 1
            if step in SCHEDULE:
                kind, arg = SCHEDULE[step]
                c.merge(arg) if kind == "merge" else c.split(arg)
                shapes.append(sorted(i.tp for i in c.instances))
    return {"shapes": shapes, "tokens": [s.output_ids for s in seqs]}


def record(out: Path):
    with tempfile.TemporaryDirectory() as tmp:
        sim_json = Path(tmp) / "sim.json"
        subprocess.run([sys.executable, "-m", "gyges.cli", *SIM, "--json", str(sim_json)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sim = json.loads(sim_json.read_text())
    tokens = {name: merge_split_tokens(peer) for name, peer in (("peer_reads", True), ("gloo", False))}
    out.write_text(json.dumps({"simulate": sim, "merge_split": tokens}, indent=1))
    print(f"wrote {out}")


def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in WALL}
    return [strip(v) for v in x] if isinstance(x, list) else x


def compare(a: Path, b: Path) -> int:
    ra, rb = (strip(json.loads(p.read_text())) for p in (a, b))
    for part in ("simulate", "merge_split"):
        print(f"{part}: {'the same' if ra[part] == rb[part] else 'DIFFERENT'}")
    return int(ra != rb)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        record(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
