"""``python -m experiments.transfer`` from a source checkout: runs entangle.experiments.transfer."""

from entangle.experiments.transfer import run

if __name__ == "__main__":
    run()
