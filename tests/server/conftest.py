"""Server test fixtures: the embedded SmolLM2 tokenizer (byte-level BPE)."""
import pytest


@pytest.fixture(scope="session")
def smol_tokenizer():
    from gyges.model.loader import load_tokenizer, resolve_model
    return load_tokenizer(resolve_model(None))
