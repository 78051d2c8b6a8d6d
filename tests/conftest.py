"""Shared pytest configuration: the fixtures that start real services (tests/services.py)."""

pytest_plugins = ["tests.support.services"]
