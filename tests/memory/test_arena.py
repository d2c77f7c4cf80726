"""Weights in the arena: each rank's shard view holds exactly its heads, with no copy."""
import pytest
import torch
from safetensors.torch import load_file

from gyges.kernels import packed
from gyges.memory import arena as arena_module
from gyges.memory.arena import Arena
from gyges.memory.layout import device_layout
from gyges.memory.weights import pad_rows
from gyges.model.config import ModelConfig
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def padded_model(tmp_path_factory):
    """6 query / 3 KV heads: at max_tp 4 the KV heads pad to 4."""
    path = make_tiny_model(tmp_path_factory.mktemp("pad"), "llama", heads=6, kv_heads=3, hidden_size=96)
    return ModelConfig.from_hf(path), load_file(path / "model.safetensors")


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("storage_offset", [0, 4096])
def test_shard_views_hold_the_right_heads(padded_model, tp, storage_offset, monkeypatch):
    """Also when the arena's memory starts inside its storage (it did when an mmap was sliced)."""
    monkeypatch.setattr(arena_module, "host_bytes",
                        lambda n: torch.empty(n + storage_offset, dtype=torch.uint8)[storage_offset:])
    config, weights = padded_model
    lay = device_layout(config, 4, 4, 4, 8 * 2**20)
    arena = Arena(lay, torch.float32, torch.device("cpu"))
    assert arena.pages.storage_offset() == storage_offset // 4
    arena.load(weights, range(4))
    pad, d = lay.padding, config.head_dim
    q_full = pad_rows(weights["model.layers.1.self_attn.q_proj.weight"], pad.num_heads * d)
    o_full = pad_rows(weights["model.layers.1.self_attn.o_proj.weight"].t(), pad.num_heads * d)
    assert pad.num_kv_heads == 4 and pad.num_heads == 8
    base = arena.pages.data_ptr()
    for rank in range(tp):
        qkv, o = arena.shard("1.qkv", tp, rank), arena.shard("1.o", tp, rank)
        m = 4 // tp
        assert qkv.shape[0] == m and qkv.data_ptr() >= base  # a view into the arena
        q_rows = torch.cat([s[:pad.q_per_shard * d] for s in qkv])
        heads = slice(rank * m * pad.q_per_shard * d, (rank + 1) * m * pad.q_per_shard * d)
        assert torch.equal(q_rows, q_full[heads])
        assert torch.equal(torch.cat([s.t() for s in o]), o_full[heads])
    # padded heads are zero rows: the fourth KV head's query heads contribute nothing
    assert torch.count_nonzero(q_full[6 * d:]) == 0


def test_kv_view_is_the_arena(padded_model):
    config, _ = padded_model
    lay = device_layout(config, 4, 4, 4, 8 * 2**20)
    arena = Arena(lay, torch.float32, torch.device("cpu"))
    kv = arena.kv()
    kv[7, 2, 1, 0, 3] = 5.0
    assert arena.pages[7].view(lay.unit.shape)[2, 1, 0, 3].eq(5.0).all()
    assert kv.data_ptr() == arena.pages.data_ptr()


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_packed_arena_holds_the_same_shards(padded_model, tp):
    """Packing reorders each matrix inside its slot: same pages, same shards, same values."""
    config, weights = padded_model
    lay = device_layout(config, 4, 4, 2, 8 * 2**20)
    plain, pack = (Arena(lay, torch.bfloat16, torch.device("cpu"), p) for p in (False, True))
    for arena in (plain, pack):
        arena.load({k: v.bfloat16() for k, v in weights.items()}, range(4))
    assert pack.packed and not plain.packed
    for rank in range(tp):
        for name in ("1.qkv", "1.o", "1.gate_up", "1.down"):
            want, got = plain.shard(name, tp, rank), pack.shard(name, tp, rank)
            assert got.data_ptr() - pack.pages.data_ptr() == want.data_ptr() - plain.pages.data_ptr()  # same slot
            for j in range(len(want)):
                assert torch.equal(packed.rows(got[j], torch.arange(want.shape[1])), want[j])
    vocab = torch.arange(config.vocab_size)
    assert torch.equal(packed.rows(pack.replicated("embed"), vocab), plain.replicated("embed"))


def _anon_huge_kib(address: int) -> int | None:
    """AnonHugePages of the mapping holding `address` in this process, None if not found."""
    inside = False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            inside = lo <= address < hi
        elif inside and head[0] == "AnonHugePages:":
            return int(head[1])
    return None


def test_cpu_arena_is_backed_by_2mib_pages_where_linux_offers_them(padded_model):
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    if "[never]" in thp:
        pytest.skip("transparent huge pages are off on this host: the arena is in 4 KiB pages")
    config, _ = padded_model
    lay = device_layout(config, 4, 4, 4, 16 * 2**20)
    arena = Arena(lay, torch.float32, torch.device("cpu"))
    assert arena.pages.data_ptr() % (2 << 20) == 0 and arena.pages.is_contiguous()
    assert _anon_huge_kib(arena.pages.data_ptr()) >= 8 * 1024  # most of the 16 MiB
    assert (arena.pages.view(torch.uint8) == 0x3C).all()
