"""Shared main of the figure binaries (figure2, figure3, figure4)."""

import sys

from absl import app

from entangle import data, flags as entangle_flags
from entangle.experiments import common
from entangle.studies import figures

FLAGS = entangle_flags.FLAGS
entangle_flags.define_all()
GROUPS = ("data", "model", "training", "attacks", "table", "output", "runtime")
RUNNERS = {"figure2": figures.run_figure2, "figure3": figures.run_figure3,
           "figure4": figures.run_figure4}


def main(argv, name):
    if len(FLAGS.seeds) > 1:
        raise app.UsageError(f"--seeds applies to the tables; {name} draws one seed (--seed)")

    def body():
        return RUNNERS[name](entangle_flags.experiment_config(FLAGS),
                             entangle_flags.table_config(FLAGS),
                             log=print if not FLAGS.quiet else (lambda m: None),
                             context=f"{common.dataset_label(FLAGS)}, "
                                     f"{entangle_flags.scale_name()}, seed {FLAGS.seed}")

    result = common.run_main(argv, body, {data.DatasetUnavailableError:
                                          "Try the quick scale: "
                                          "--flagfile=flags/cifar10_quick.cfg"})
    from entangle.report import figures as report_figures

    grid = isinstance(result, figures.GridResult)
    common.write(result, report_figures.write_grid if grid else report_figures.write_curve,
                 common.results_dir(FLAGS, name))
    files = result.files
    if not grid:
        for series, values in result.series.items():
            print(f"\n{series}:")
            for eps, rep in sorted(values.items()):
                ref = result.paper.get(eps)
                print(f"  eps {eps:<8g} {100 * rep['accuracy']:5.1f} %"
                      + (f"   (paper {ref:g} %)" if ref is not None else ""))
    print("\nfiles: " + ", ".join(files.values()))
    if result.write_error:
        print(result.write_error, file=sys.stderr)
        sys.exit(1)


def run(name, argv=None):
    entangle_flags.uses(name, GROUPS)
    argv = argv or sys.argv
    default = "imagenet9_paper.cfg" if "--dataset=imagenet9" in argv else "cifar10_paper.cfg"
    app.run(lambda argv: main(argv, name), argv=common.with_default_flagfile(argv, default),
            flags_parser=entangle_flags.parse_flags)
