"""Shared pytest configuration: the fixtures that start real services and point tasks at a run (tests/support)."""

pytest_plugins = ["tests.support.services", "tests.support.task_runs"]
