"""Figure 3 (7 with --dataset=imagenet9): a standard classifier on every R_eps.

    python -m experiments.figure3 --flagfile=flags/cifar10_quick.cfg --columns=extended
"""

from entangle.experiments.common import configure_environment

configure_environment()

from entangle.experiments import figures  # noqa: E402

def run(argv=None):
    figures.run("figure3", argv)


if __name__ == "__main__":
    run()
