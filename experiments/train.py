"""``python -m experiments.train`` from a source checkout: runs entangle.experiments.train."""

from entangle.experiments.train import run

if __name__ == "__main__":
    run()
