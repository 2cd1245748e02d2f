"""``python -m experiments.table2`` from a source checkout: runs entangle.experiments.table2."""

from entangle.experiments.table2 import run

if __name__ == "__main__":
    run()
