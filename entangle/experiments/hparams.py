"""Print the paper's appendix Tables 3 and 4 as Markdown, rendered from the flagfiles in flags/.

    python -m experiments.hparams
"""

from entangle.experiments.common import configure_environment

configure_environment()

import sys  # noqa: E402

from absl import app  # noqa: E402

from entangle import flags as entangle_flags  # noqa: E402
from entangle.flags import hparams  # noqa: E402


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    print(hparams.table3_markdown())
    print()
    print(hparams.table4_markdown())


def run(argv=None):
    app.run(main, argv=argv or sys.argv, flags_parser=entangle_flags.parse_flags)


if __name__ == "__main__":
    run()
