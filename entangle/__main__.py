"""``python -m entangle <binary> [flags]``: the ``entangle`` command."""

from entangle.cli import main

main()
