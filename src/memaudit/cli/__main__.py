"""``python -m memaudit.cli``: the same as the ``memaudit`` command."""

from memaudit.cli.app import main

main()
