"""Table 2 (and with --columns=extended, Table 6): classifiers on robustified ImageNet-9.

    python -m experiments.table2 --data_dir=/data/tfds            # paper scale, eps 1.0
    python -m experiments.table2 --imagenet9_balance              # class-balanced subsample
"""

from entangle.experiments.common import configure_environment

configure_environment()

import functools  # noqa: E402
import sys  # noqa: E402

from absl import app  # noqa: E402

from entangle import flags as entangle_flags  # noqa: E402
from entangle.experiments import common, table1  # noqa: E402

QUICK = ("ImageNet-9 needs prepared tfds data for imagenet_resized/64x64 (--data_dir, or "
         "downloaded by tfds where the network answers). To try the pipeline without it:\n"
         "  python -m experiments.table1 --flagfile=flags/smoke.cfg")

def run(argv=None):
    entangle_flags.uses("table2", table1.GROUPS)
    app.run(functools.partial(table1.main, name="table2", title="Table 2", quick=QUICK),
            argv=common.with_default_flagfile(argv or sys.argv, "imagenet9_paper.cfg"),
            flags_parser=entangle_flags.parse_flags)


if __name__ == "__main__":
    run()
