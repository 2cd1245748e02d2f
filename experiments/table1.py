"""``python -m experiments.table1`` from a source checkout: runs entangle.experiments.table1."""

from entangle.experiments.table1 import run

if __name__ == "__main__":
    run()
