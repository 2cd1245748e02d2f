"""``python -m experiments.store`` from a source checkout: runs entangle.experiments.store."""

from entangle.experiments.store import run

if __name__ == "__main__":
    run()
