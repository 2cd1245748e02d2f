"""Waseda et al. (2023) section 4: an N-targeted attack leads F1 to Y1 and F2 to Y2 on the
training set; models trained on the examples relabelled by Y1 and by Y2 are scored on the
original test set. Both above chance: the examples carry features of two classes at once.

    python -m experiments.different_mistakes --flagfile=flags/cifar10_quick.cfg
    python -m experiments.different_mistakes --flagfile=flags/cifar10_quick.cfg \\
        --second_model=mobilenet_v2
    python -m experiments.different_mistakes --data_dir=/data/tfds          # paper scale
"""

from entangle.experiments.common import configure_environment

configure_environment()

import sys  # noqa: E402

from absl import app  # noqa: E402

from entangle import data, flags as entangle_flags  # noqa: E402
from entangle.experiments import common  # noqa: E402
from entangle.studies import mistakes  # noqa: E402

FLAGS = entangle_flags.FLAGS
entangle_flags.define_all()
entangle_flags.uses("different_mistakes", ("data", "model", "victims", "training", "attacks",
                                           "mistakes", "output", "runtime", "estimate"),
                    also=("target_seed",))
QUICK = ("Without prepared data, run the quick scale on the CIFAR-10 image folder instead:\n"
         "  python -m experiments.different_mistakes --flagfile=flags/cifar10_quick.cfg\n"
         "or the synthetic smoke scale, which needs no files:\n"
         "  python -m experiments.different_mistakes --flagfile=flags/smoke.cfg")


def main(argv):
    if FLAGS.estimate:
        common.estimate_and_exit(argv, "mistakes", lambda: entangle_flags.experiment_config(FLAGS),
                                 lambda: entangle_flags.mistakes_config(FLAGS),
                                 f"different mistakes ({common.dataset_label(FLAGS)}, "
                                 f"{entangle_flags.scale_name()})",
                                 {data.DatasetUnavailableError: QUICK})

    def body():
        return mistakes.run_mistakes(entangle_flags.experiment_config(FLAGS),
                                     entangle_flags.mistakes_config(FLAGS),
                                     log=print if not FLAGS.quiet else (lambda m: None))

    result = common.run_main(argv, body, {data.DatasetUnavailableError: QUICK})
    from entangle.report import mistakes as report_mistakes

    common.write(result, report_mistakes.write_mistakes, common.results_dir(FLAGS, "mistakes"))
    print()
    print(report_mistakes.mistakes_markdown(result))
    common.finish(result)


def run(argv=None):
    app.run(main, argv=common.with_default_flagfile(argv or sys.argv, "cifar10_paper.cfg"),
            flags_parser=entangle_flags.parse_flags)


if __name__ == "__main__":
    run()
