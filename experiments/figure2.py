"""``python -m experiments.figure2`` from a source checkout: runs entangle.experiments.figure2."""

from entangle.experiments.figure2 import run

if __name__ == "__main__":
    run()
