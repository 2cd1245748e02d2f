"""entangle: robust/non-robust feature entanglement experiments (Springer et al., 2021)."""

__version__ = "0.1.0"
