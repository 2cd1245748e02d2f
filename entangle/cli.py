"""The ``entangle`` command: ``entangle <binary> [flags]`` runs entangle.experiments.<binary>
(installed use; from a source checkout ``python -m experiments.<binary>`` is the same)."""

from __future__ import annotations

import importlib
import sys

BINARIES = {
    "table1": "Table 1 (Table 5 with --columns=extended): classifiers on robustified data",
    "table2": "Table 2 (Table 6): the same on ImageNet-9",
    "figure2": "Figure 2: seeds and robustified images by eps",
    "figure3": "Figure 3: accuracy on R_eps by eps",
    "figure4": "Figure 4: each eps-robust classifier on the original test set",
    "train": "train one classifier into the store and report its accuracy",
    "transfer": "transfer attacks from standard and robust sources to victims",
    "different_mistakes": "Waseda et al.'s different-mistakes experiment",
    "planted_study": "the paper's inference on planted features with known truth",
    "hparams": "the paper's Tables 3 and 4, rendered from the flagfiles",
    "store": "what the artifact store holds; --gc removes what no manifest owns",
}


def usage() -> str:
    width = max(map(len, BINARIES))
    return ("usage: entangle <binary> [--flag=value ...]   (entangle <binary> --help for its "
            "flags)\n\nbinaries:\n" + "\n".join(f"  {n:<{width}}  {d}"
                                                for n, d in BINARIES.items()))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in BINARIES:
        print(f"entangle: unknown binary {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"entangle.experiments.{name}")
    module.run([f"entangle {name}"] + argv[2:])


if __name__ == "__main__":
    main()
