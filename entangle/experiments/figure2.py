"""Figures 2/11/12: seeds, robustified images by eps, originals.

    python -m experiments.figure2 --flagfile=flags/cifar10_quick.cfg --columns=extended
"""

from entangle.experiments.common import configure_environment

configure_environment()

from entangle.experiments import figures  # noqa: E402

def run(argv=None):
    figures.run("figure2", argv)


if __name__ == "__main__":
    run()
