"""Transfer from robust sources: Figures 5/6 (CIFAR-10), 8/9 with --dataset=imagenet9, the
adversarial examples of Figures 13/14, and Waseda et al.'s class-aware ratios.

    python -m experiments.transfer --flagfile=flags/cifar10_quick.cfg          # after table1
    python -m experiments.transfer --flagfile=flags/cifar10_quick.cfg --attack=n_targeted \\
        --sources=0,1/4
    python -m experiments.transfer --data_dir=/data/tfds                       # paper scale
"""

from entangle.experiments.common import configure_environment

configure_environment()

import sys  # noqa: E402

from absl import app  # noqa: E402

from entangle import data, flags as entangle_flags  # noqa: E402
from entangle.core import models
from entangle.experiments import common  # noqa: E402
from entangle.studies import transfer  # noqa: E402

FLAGS = entangle_flags.FLAGS
entangle_flags.define_all()
entangle_flags.uses("transfer", ("data", "model", "victims", "training", "attacks", "transfer",
                                 "output", "runtime", "estimate"))
QUICK = ("Without prepared data, run the quick scale on the CIFAR-10 image folder instead:\n"
         "  python -m experiments.transfer --flagfile=flags/cifar10_quick.cfg\n"
         "or the synthetic smoke scale, which needs no files:\n"
         "  python -m experiments.transfer --flagfile=flags/smoke.cfg")


def main(argv):
    failures = {
        data.DatasetUnavailableError: QUICK,
        models.WeightsUnavailableError: "Or train the victims from scratch: "
                                        "--victim_weights=none (every table and figure then "
                                        "says so)."}
    if FLAGS.estimate:
        common.estimate_and_exit(argv, "transfer",
                                 lambda: entangle_flags.experiment_config(FLAGS),
                                 lambda: entangle_flags.transfer_config(FLAGS),
                                 f"transfer ({common.dataset_label(FLAGS)}, "
                                 f"{entangle_flags.scale_name()})", failures)

    cfg = entangle_flags.transfer_config(FLAGS)

    def body():
        return transfer.run_transfer(entangle_flags.experiment_config(FLAGS), cfg,
                                     log=print if not FLAGS.quiet else (lambda m: None))

    result = common.run_main(argv, body, failures)
    from entangle.report import transfer as report_transfer

    name = "transfer" if cfg.mode == "per_source" else \
        f"transfer-n_targeted-{cfg.n_targeted_loss}"
    sources = [] if FLAGS.sources == "paper" else [common.tag("src", FLAGS.sources)]
    common.write(result, report_transfer.write_transfer,
                 common.results_dir(FLAGS, name, extra=sources))
    print()
    print(report_transfer.transfer_markdown(result, "Transfer from robust sources"))
    common.finish(result)


def run(argv=None):
    argv = argv or sys.argv
    default = "imagenet9_paper.cfg" if "--dataset=imagenet9" in argv else "cifar10_paper.cfg"
    app.run(main, argv=common.with_default_flagfile(argv, default),
            flags_parser=entangle_flags.parse_flags)


if __name__ == "__main__":
    run()
