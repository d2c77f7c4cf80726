"""Lazy loading: the weights read as they are in the file, and a cluster of N devices costs about
one copy of the model beyond its arenas at start-up, not N (issue 8 item 8)."""
import pytest
import torch
from safetensors.torch import load_file

from benchmarks.load_memory import BIG_LLAMA, measure
from gyges.model.loader import LazyWeights, load_config
from tests.conftest import make_tiny_model


def test_lazy_weights_match_the_file(tiny_llama):
    eager = load_file(tiny_llama / "model.safetensors")
    lazy = LazyWeights(tiny_llama, load_config(tiny_llama))
    assert set(lazy) == set(eager)
    for name, value in eager.items():
        assert torch.equal(lazy[name], value), name


@pytest.fixture(scope="module")
def big_llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("llama-175mb"), "llama", **BIG_LLAMA)


@pytest.mark.slow  # two cluster start-ups: ~40 s at 2 devices, ~60 s at 4 on 2 busy cores
@pytest.mark.parametrize("devices", [2, 4])
def test_start_up_costs_about_one_copy_of_the_model(big_llama, tiny_llama, devices):
    """PSS beyond the arenas, over the same cluster on a tiny model, at its sampled peak during
    start-up: an eager loader holds `devices` copies of the file's tensors; a lazy one holds the
    file's pages once (shared) plus a layer per device."""
    r = measure(str(big_llama), str(tiny_llama), devices, "320MiB")
    assert r["extra_peak_bytes"] <= 1.5 * r["model_bytes_on_disk"], r
