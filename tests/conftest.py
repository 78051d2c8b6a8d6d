"""Shared pytest configuration: the fixtures that start real services and point tasks at a run (tests/support)."""

import pytest

from memaudit.environment import CACHE_ENV

pytest_plugins = ["tests.support.services", "tests.support.task_runs"]


@pytest.fixture(scope="session", autouse=True)
def _own_cache_folder(tmp_path_factory):
    """Tests (and the task processes they start) build tiny models into a cache of their own, never ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("memaudit-cache")))
        yield
