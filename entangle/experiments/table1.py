"""Table 1 (and with --columns=extended, Table 5): classifiers on robustified CIFAR-10.

    python -m experiments.table1 --eps=0.5 --flagfile=flags/cifar10_quick.cfg   # quick, offline
    python -m experiments.table1 --data_dir=/data/tfds                          # paper scale
"""

from entangle.experiments.common import configure_environment

configure_environment()

import sys  # noqa: E402

from absl import app  # noqa: E402

from entangle import data, flags as entangle_flags  # noqa: E402
from entangle.experiments import common  # noqa: E402
from entangle.studies import entanglement  # noqa: E402

FLAGS = entangle_flags.FLAGS
entangle_flags.define_all()
GROUPS = ("data", "model", "training", "attacks", "table", "output", "runtime", "estimate")
NAME, DEFAULT_FLAGFILE, TITLE = "table1", "cifar10_paper.cfg", "Table 1"
QUICK = ("Without prepared data, run the quick scale on an image folder instead, e.g.\n"
         "  python -m experiments.table1 --eps=0.5 --flagfile=flags/cifar10_quick.cfg\n"
         "or the synthetic smoke scale, which needs no files:\n"
         "  python -m experiments.table1 --flagfile=flags/smoke.cfg")


def main(argv, name=NAME, title=TITLE, quick=QUICK):
    label = (f"{title}{' extended' if FLAGS.columns == 'extended' else ''} "
             f"({common.dataset_label(FLAGS)}, {entangle_flags.scale_name()})")
    log = print if not FLAGS.quiet else (lambda m: None)
    seeds = entangle_flags.seeds(FLAGS)
    failures = {data.DatasetUnavailableError: quick}
    if FLAGS.estimate:
        common.estimate_and_exit(
            argv, "table", lambda: entanglement.with_seed(
                entangle_flags.experiment_config(FLAGS), seeds[0]),
            lambda: entangle_flags.table_config(FLAGS),
            f"{label}, seed {seeds[0]}" + (f" (x{len(seeds)} seeds)" if len(seeds) > 1 else ""),
            failures)

    def body():
        exp_cfg = entangle_flags.experiment_config(FLAGS)
        cfg = entangle_flags.table_config(FLAGS)
        given = common.provenance(FLAGS)
        if len(seeds) > 1:
            return entanglement.run_seeds(exp_cfg, cfg, seeds, log=log, provenance=given)
        return entanglement.run_table(entanglement.with_seed(exp_cfg, seeds[0]), cfg,
                                      log=log, provenance=given)

    result = common.run_main(argv, body, failures)
    from entangle import report

    out = common.results_dir(FLAGS, name, table=True)
    if isinstance(result, entanglement.SeedsResult):
        common.write(result, report.write_seeds, out, label)
    else:
        common.write(result, report.write_table, out, f"{label}, seed {seeds[0]}")

    print()
    if isinstance(result, entanglement.SeedsResult):
        for s in result.seeds:
            print(report.table_markdown(result.tables[s], f"{label}, seed {s}"))
            print()
        print(report.seeds_markdown(result, label))
    else:
        print(report.table_markdown(result, f"{label}, seed {seeds[0]}"))
    common.finish(result)


def run(argv=None):
    entangle_flags.uses(NAME, GROUPS)
    app.run(main, argv=common.with_default_flagfile(argv or sys.argv, DEFAULT_FLAGFILE),
            flags_parser=entangle_flags.parse_flags)


if __name__ == "__main__":
    run()
