"""Source-checkout entry points (``python -m experiments.<binary>`` from the repository root).

The binaries live in ``entangle.experiments``; installed, they are ``entangle <binary>``.
This folder is not installed.
"""
