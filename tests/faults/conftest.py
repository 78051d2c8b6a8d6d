"""The fault-injection suite (docs/design.md §7): slow, run by ``make test``, counted by benchmarks/faults.py."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/faults/" in str(item.fspath):
            item.add_marker(pytest.mark.slow)
