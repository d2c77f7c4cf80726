"""Shared fixtures: tiny random Llama-family models saved as HF safetensors directories."""
import pytest
import torch


def make_tiny_model(path, arch: str = "llama", tie: bool = False, heads: int = 8, kv_heads: int = 4,
                    seed: int = 0, **overrides):
    """A random tiny model of `arch` saved to `path`; returns the path."""
    import transformers
    kinds = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
             "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
             "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}
    config_cls, model_cls = kinds[arch]
    kw = dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=heads,
              num_key_value_heads=kv_heads, max_position_embeddings=1024, tie_word_embeddings=tie,
              bos_token_id=1, eos_token_id=2)
    if arch == "mistral":
        kw["sliding_window"] = None
    kw.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kw)).to(torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.08)
    model.save_pretrained(path)
    _save_tokenizer(path)
    return path


def _save_tokenizer(path):
    """A word-level tokenizer over the tiny vocabulary, so the directory is complete."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 512)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", tie=True, heads=6, kv_heads=2)


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The embedded SmolLM2's tokenizer (byte-level BPE: characters split across tokens)."""
    from gyges.model.loader import load_tokenizer, resolve_model
    return load_tokenizer(resolve_model(None))
