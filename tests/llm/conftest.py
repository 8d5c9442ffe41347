"""Fixtures of the causal-LM tests: the tiny llama and its word tokenizer from tests/factories.py."""
import pytest
from factories import llama_word_tokenizer, tiny_llama


@pytest.fixture
def model():
    return tiny_llama()


@pytest.fixture
def make_llama():
    """The factory itself: ``make_llama(layers=..., heads=..., kv_heads=..., seed=...)``."""
    return tiny_llama


@pytest.fixture
def tokenizer():
    return llama_word_tokenizer()
