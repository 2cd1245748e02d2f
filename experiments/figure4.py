"""Figure 4 (10 with --dataset=imagenet9): each eps-robust classifier on the test set.

    python -m experiments.figure4 --flagfile=flags/cifar10_quick.cfg --columns=extended
"""

from experiments.common import configure_environment

configure_environment()

from experiments import figures  # noqa: E402

if __name__ == "__main__":
    figures.run("figure4")
