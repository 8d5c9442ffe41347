"""Tiny random llama-architecture causal LMs and a word-level tokenizer (no downloads)."""
import pytest
import torch


def tiny_llama(*, layers: int = 4, heads: int = 4, kv_heads: int = 2, vocab: int = 48, seed: int = 0,
               tie: bool = True, std: float = 0.2):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=40, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=8,
                      max_position_embeddings=64, tie_word_embeddings=tie, initializer_range=std,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(44)]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")


@pytest.fixture
def model():
    return tiny_llama()


@pytest.fixture
def make_llama():
    """The factory itself: ``make_llama(layers=..., heads=..., kv_heads=..., seed=...)``."""
    return tiny_llama


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()
