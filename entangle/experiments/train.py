"""Train one classifier into the artifact store and report its test and PGD accuracy.

    python -m experiments.train --flagfile=flags/cifar10_quick.cfg --kind=robust --eps=0.5
"""

from entangle.experiments.common import configure_environment

configure_environment()

import sys  # noqa: E402

from absl import app  # noqa: E402

from entangle import data, flags as entangle_flags  # noqa: E402
from entangle.experiments import common  # noqa: E402
from entangle.studies import single  # noqa: E402

FLAGS = entangle_flags.FLAGS
entangle_flags.define_all()
entangle_flags.uses("train", ("data", "model", "training", "single", "attacks", "output",
                              "runtime"))


def main(argv):
    report = common.run_main(
        argv, lambda: single.run_train(entangle_flags.experiment_config(FLAGS), FLAGS.kind,
                                       FLAGS.eps, FLAGS.attack_eps),
        usage_errors=(data.DatasetUnavailableError,))
    print(f"\n{report.kind} model (eps {report.eps:g}) {report.key}"
          f"{' [cache hit]' if report.cached else ''}")
    print(f"  test accuracy: {report.test_accuracy:.4f} on {report.num_test} images "
          f"(balanced {report.balanced_accuracy:.4f}, majority class {report.majority_rate:.4f})")
    if report.pgd_accuracy is not None:
        print(f"  PGD accuracy at eps {report.attack_eps:g}: {report.pgd_accuracy:.4f}")
    print(f"  stored in {report.store_path} ({report.seconds:.1f}s)")


def run(argv=None):
    app.run(main, argv=argv or sys.argv, flags_parser=entangle_flags.parse_flags)


if __name__ == "__main__":
    run()
