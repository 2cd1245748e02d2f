"""Thin absl binaries: parse flags, call one entangle entry point, print the result."""
