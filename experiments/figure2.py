"""Figures 2/11/12: seeds, robustified images by eps, originals.

    python -m experiments.figure2 --flagfile=flags/cifar10_quick.cfg --columns=extended
"""

from experiments.common import configure_environment

configure_environment()

from experiments import figures  # noqa: E402

if __name__ == "__main__":
    figures.run("figure2")
