"""Figure 4 (10 with --dataset=imagenet9): each eps-robust classifier on the test set.

    python -m experiments.figure4 --flagfile=flags/cifar10_quick.cfg --columns=extended
"""

from entangle.experiments.common import configure_environment

configure_environment()

from entangle.experiments import figures  # noqa: E402

def run(argv=None):
    figures.run("figure4", argv)


if __name__ == "__main__":
    run()
