"""``python -m experiments.hparams`` from a source checkout: runs entangle.experiments.hparams."""

from entangle.experiments.hparams import run

if __name__ == "__main__":
    run()
