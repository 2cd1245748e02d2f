"""Figure 3 (7 with --dataset=imagenet9): a standard classifier on every R_eps.

    python -m experiments.figure3 --flagfile=flags/cifar10_quick.cfg --columns=extended
"""

from experiments.common import configure_environment

configure_environment()

from experiments import figures  # noqa: E402

if __name__ == "__main__":
    figures.run("figure3")
