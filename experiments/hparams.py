"""Print the paper's appendix Tables 3 and 4 as Markdown, rendered from the flagfiles in flags/.

    python -m experiments.hparams
"""

from experiments.common import configure_environment

configure_environment()

from absl import app  # noqa: E402

import flags as entangle_flags  # noqa: E402
from flags import hparams  # noqa: E402


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    print(hparams.table3_markdown())
    print()
    print(hparams.table4_markdown())


if __name__ == "__main__":
    app.run(main, flags_parser=entangle_flags.parse_flags)
