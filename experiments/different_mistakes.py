"""``python -m experiments.different_mistakes`` from a source checkout: runs entangle.experiments.different_mistakes."""

from entangle.experiments.different_mistakes import run

if __name__ == "__main__":
    run()
