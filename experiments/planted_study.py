"""``python -m experiments.planted_study`` from a source checkout: runs entangle.experiments.planted_study."""

from entangle.experiments.planted_study import run

if __name__ == "__main__":
    run()
