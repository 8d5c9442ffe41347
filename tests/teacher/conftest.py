"""Teacher tests: one torch thread per module (the shared fixtures are in tests/conftest.py)."""
import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(one_torch_thread):
    yield
