"""``python -m experiments.figure4`` from a source checkout: runs entangle.experiments.figure4."""

from entangle.experiments.figure4 import run

if __name__ == "__main__":
    run()
