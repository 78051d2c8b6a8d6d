"""The ``memaudit`` command line."""

from memaudit.cli.app import app, main

__all__ = ["app", "main"]
