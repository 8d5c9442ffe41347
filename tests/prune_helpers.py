"""Old name of ``tests/factories.py`` (the one home of the tiny test models and data), kept while
branches written before it still import ``prune_helpers``; new tests import ``factories``."""
from factories import *  # noqa: F401,F403
