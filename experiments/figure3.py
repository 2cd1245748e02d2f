"""``python -m experiments.figure3`` from a source checkout: runs entangle.experiments.figure3."""

from entangle.experiments.figure3 import run

if __name__ == "__main__":
    run()
