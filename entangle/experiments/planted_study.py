"""Ground truth for the paper's inference: the Table 1 protocol on planted worlds (ABC, AB, AD,
AC, A; two seeds; construction budgets 0.5 and 1.0) beside the measured truth (probes,
calibrated detectors, premise checks, Goh's leakage) and the verdict: a confusion table of the
protocol's "Type B present" against "R_eps carries B and the zero-robust model uses it".

    python -m experiments.planted_study                       # quick scale, no files needed
    python -m experiments.planted_study --flagfile=flags/smoke.cfg --feature_sets=AB,A
"""

from entangle.experiments.common import configure_environment

configure_environment()

import sys  # noqa: E402

from absl import app  # noqa: E402

from entangle import flags as entangle_flags  # noqa: E402
from entangle.experiments import common  # noqa: E402
from entangle.studies import planted_study  # noqa: E402

FLAGS = entangle_flags.FLAGS
entangle_flags.define_all()
entangle_flags.uses("planted_study", ("data", "model", "training", "attacks", "table", "study",
                                      "output", "runtime"))


def main(argv):
    def body():
        return planted_study.run_planted_study(
            entangle_flags.experiment_config(FLAGS), entangle_flags.study_config(FLAGS),
            log=print if not FLAGS.quiet else (lambda m: None))

    result = common.run_main(argv, body)
    from entangle.report import planted as planted_report

    common.write(result, planted_report.write_study, common.results_dir(FLAGS, "planted_study"))
    print()
    print(planted_report.markdown(result))
    common.finish(result)


def run(argv=None):
    app.run(main, argv=common.with_default_flagfile(argv or sys.argv, "planted_study.cfg"),
            flags_parser=entangle_flags.parse_flags)


if __name__ == "__main__":
    run()
