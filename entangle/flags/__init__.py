"""absl flags in groups by concern, and the parsing every binary shares.

The groups live beside this file: ``data`` (dataset, subsets, the planted world), ``model``
(architectures, victims), ``training`` (Table 3's schedules per model kind), ``attacks``
(training attack, construction, robustification: Table 4), ``experiment`` (table, transfer,
planted study, different mistakes), ``runtime`` (output, distribution and performance,
store maintenance) and ``estimate`` (projections, for the binaries that plan). ``configs``
turns the parsed values into the library's typed configs; the library never reads FLAGS.
Each binary declares the groups it uses (``uses``): its ``--help`` lists those, with the
values its default flagfile sets, and a flag of another group given on its command line is
an error.

Hyperparameters that differ by model kind (Table 3) take a default plus per-kind overrides,
e.g. ``--learning_rate=1e-3,zero_robust:1e-4,neg_robust:1e-4,victim:1e-4``; boolean per-kind
settings take the list of kinds they are on for (``--augment=standard,robust,victim``). The
paper's values live in the flagfiles beside this file (``*.cfg``), each with its source.

Flagfiles are expanded here, not by absl (``expand_flagfiles``), so that a path inside a
flagfile (a nested ``--flagfile``, ``--dataset=folder:PATH``, ``--data_dir``) is relative to
that flagfile, a shipped flagfile can be named from any directory
(``--flagfile=cifar10_quick.cfg``), and an unknown flag in a flagfile names its file and line.
"""

from __future__ import annotations

import os
import sys
import textwrap

from absl import flags

from entangle.flags._checks import (FLAGS, MODEL_KINDS, VICTIM_WEIGHTS, kinds_on,
                                    parse_columns, per_kind)
from entangle.flags.attacks import define_attack_flags
from entangle.flags.configs import (experiment_config, mistakes_config, robust_row_eps, seeds,
                                    study_config, table_config, train_config, transfer_config)
from entangle.flags.data import define_data_flags
from entangle.flags.experiment import (define_mistakes_flags, define_study_flags,
                                       define_table_flags, define_transfer_flags)
from entangle.flags.model import define_model_flags, define_victim_flags
from entangle.flags.runtime import (define_estimate_flags, define_output_flags,
                                    define_runtime_flags, define_store_flags, estimate_images)
from entangle.flags.training import define_single_model_flags, define_train_flags

__all__ = ["FLAGS", "GROUPS", "MODEL_KINDS", "VICTIM_WEIGHTS", "define_all", "uses",
           "parse", "parse_flags", "expand_flagfiles", "flagfile", "scale_name", "help_text",
           "per_kind", "kinds_on", "parse_columns", "experiment_config", "train_config",
           "table_config", "seeds", "results_configuration", "transfer_config", "study_config",
           "mistakes_config",
           "estimate_images"]
HERE = os.path.dirname(os.path.abspath(__file__))

# group name -> (title in --help, definer), in --help's order
GROUPS = {
    "data": ("Data", define_data_flags),
    "model": ("Model", define_model_flags),
    "victims": ("Victims (transfer, different mistakes)", define_victim_flags),
    "training": ("Training (Table 3, per model kind)", define_train_flags),
    "single": ("The one model of the train binary", define_single_model_flags),
    "attacks": ("Attacks and robustification (Table 4)", define_attack_flags),
    "table": ("Table and figures", define_table_flags),
    "transfer": ("Transfer", define_transfer_flags),
    "study": ("Planted study", define_study_flags),
    "mistakes": ("Different mistakes", define_mistakes_flags),
    "output": ("Store and output", define_output_flags),
    "runtime": ("Distribution and performance", define_runtime_flags),
    "estimate": ("Projections", define_estimate_flags),
    "store": ("Store maintenance", define_store_flags),
}
GROUP_OF: dict[str, str] = {}   # flag name -> its group
_USES: dict = {"groups": None, "also": (), "name": None}


def define_all(fv=FLAGS):
    """Defines every group's flags in ``fv`` (the shared flagfiles set flags of every group)."""
    for group, (_, define) in GROUPS.items():
        before = set(fv)
        define(fv)
        GROUP_OF.update({name: group for name in set(fv) - before})


def uses(name: str, groups: tuple[str, ...], also: tuple[str, ...] = ()) -> None:
    """Declares the flag groups (and single flags of other groups) binary ``name`` reads."""
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown flag groups {sorted(unknown)}; known: {list(GROUPS)}")
    _USES.update(name=name, groups=tuple(groups), also=tuple(also))


PATH_FLAGS = ("data_dir", "workdir", "image_cache_dir")
# What decides where a run reads and writes and how fast it goes, never what it computes: left
# out of a results folder's configuration.
NOT_RESULT_GROUPS = ("output", "runtime", "estimate", "store")
NOT_RESULT_FLAGS = ("data_dir", "download", "image_cache_dir")


def results_configuration(fv=FLAGS) -> dict:
    """{flag: value} of every flag the running binary reads that can change its results: the
    configuration a results folder is keyed by and records."""
    groups, also = _USES["groups"] or tuple(GROUPS), _USES["also"]
    return {name: fv[name].value for name in sorted(fv)
            if name in GROUP_OF and (GROUP_OF[name] in groups or name in also)
            and GROUP_OF[name] not in NOT_RESULT_GROUPS and name not in NOT_RESULT_FLAGS}


def flagfile(name: str) -> str:
    """Absolute path of a flagfile shipped in flags/ (e.g. 'cifar10_paper.cfg')."""
    return os.path.join(HERE, name)


def _find_flagfile(path: str, base: str | None) -> str:
    """A flagfile path: relative to ``base`` (the including flagfile's folder) or the working
    directory, else a file shipped in flags/."""
    path = os.path.expanduser(path)
    candidates = [path] if os.path.isabs(path) else (
        ([os.path.join(base, path)] if base else []) + [os.path.abspath(path),
                                                        os.path.join(HERE, path),
                                                        os.path.join(HERE, os.path.basename(path))])
    for c in candidates:
        if os.path.isfile(c):
            return os.path.realpath(c)  # a symlinked flagfile reads paths from its real folder
    raise flags.Error(f"--flagfile: cannot find {path!r} (looked in "
                      f"{', '.join(dict.fromkeys(os.path.dirname(c) or '.' for c in candidates))}"
                      f"); shipped flagfiles: {', '.join(sorted(f for f in os.listdir(HERE) if f.endswith('.cfg')))}")


def _rebase(arg: str, base: str) -> str:
    """Makes a relative path in a flagfile line relative to the flagfile's folder."""
    name, _, value = arg.lstrip("-").partition("=")
    if name == "dataset" and value.startswith("folder:"):
        p = value[len("folder:"):]
        return arg if os.path.isabs(os.path.expanduser(p)) else \
            f"--dataset=folder:{os.path.normpath(os.path.join(base, p))}"
    if name in PATH_FLAGS and value and not os.path.isabs(os.path.expanduser(value)):
        return f"--{name}={os.path.normpath(os.path.join(base, value))}"
    return arg


def _expand(argv: list[str], base: str | None, depth: int,
            origin: str | None) -> list[tuple[str, str | None]]:
    """(arg, where it came from: None for the command line, else 'file line N')."""
    if depth > 10:
        raise flags.Error("--flagfile: nesting deeper than 10 (a cycle?)")
    out = []
    for i, arg in enumerate(argv):
        if arg.startswith(("--flagfile=", "-flagfile=")):
            path = _find_flagfile(arg.split("=", 1)[1], base)
            folder = os.path.dirname(path)
            with open(path) as f:
                lines = [(n, l.strip()) for n, l in enumerate(f, 1)]
            for n, line in lines:
                if line and not line.startswith(("#", "//")):
                    out += _expand([_rebase(line, folder)], folder, depth + 1,
                                   f"{path} line {n}")
        else:
            out.append((arg, origin))
    return out


def expand_flagfiles(argv: list[str], base: str | None = None) -> list[str]:
    """argv with every ``--flagfile=F`` replaced, in place, by F's flags (recursively)."""
    return [a for a, _ in _expand(list(argv), base, 0, None)]


def parse(args: list[str], fv=FLAGS) -> list[str]:
    """Parses ``args`` (no program name) into ``fv`` with flagfiles expanded; raises
    flags.Error on a bad value."""
    return fv(["entangle"] + expand_flagfiles(list(args)))


FLAGFILES: list[str] = []  # the top-level flagfiles of the parsed command line, in order
HELP = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?", "--helpfull", "-helpfull")


def scale_name() -> str:
    """The scale a run is at: the last flagfile on its command line (its name)."""
    return os.path.basename(FLAGFILES[-1]) if FLAGFILES else "no flagfile"


def _flag_name(arg: str, fv) -> str | None:
    """The flag an argument sets (``--noaugment`` sets augment), or None for a non-flag."""
    if not arg.startswith("-") or arg in ("-", "--"):
        return None
    name = arg.lstrip("-").split("=", 1)[0]
    if name not in fv and name.startswith("no") and name[2:] in fv:
        return name[2:]
    return name


def _check_args(expanded: list[tuple[str, str | None]], fv) -> None:
    """An unknown flag in a flagfile names the file and line; a flag of a group the binary
    does not use, given on its command line, is an error (it would be silently ignored)."""
    for arg, origin in expanded:
        name = _flag_name(arg, fv)
        if name is None:
            continue
        if name not in fv and origin is not None:
            raise flags.Error(f"unknown flag --{name} in {origin}")
        group = GROUP_OF.get(name)
        if (origin is None and group is not None and _USES["groups"] is not None
                and group not in _USES["groups"] and name not in _USES["also"]):
            users = ", ".join(title for g, (title, _) in GROUPS.items() if g == group)
            raise flags.Error(f"--{name} is not used by {_USES['name']} (it is one of the "
                              f"{users.lower()} flags); drop it, or run the binary that "
                              f"uses it")


def help_text(fv=FLAGS, full: bool = False) -> str:
    """The binary's flags by group, with the values in effect (its default flagfile and any
    flagfiles given before --help), wrapped for a terminal."""
    module = sys.modules.get(f"entangle.experiments.{_USES['name']}") or sys.modules["__main__"]
    main_doc = (module.__doc__ or "").strip()
    groups = list(GROUPS) if full or _USES["groups"] is None else \
        [g for g in GROUPS if g in _USES["groups"]]
    also = [] if full else list(_USES["also"])
    lines = [main_doc, ""] if main_doc else []
    lines.append(f"Flags of {_USES['name'] or 'entangle'} (values as set by "
                 f"{', '.join(os.path.basename(f) for f in FLAGFILES) or 'the defaults'}; "
                 f"--helpfull lists every group):")
    by_group: dict[str, list[str]] = {}
    hide_planted = not full and fv["dataset"].value != "planted"
    for name, group in GROUP_OF.items():
        if hide_planted and name.startswith("planted_"):
            continue
        if group in groups or name in also:
            by_group.setdefault(group, []).append(name)
    for group in GROUPS:
        if group not in by_group:
            continue
        lines += ["", GROUPS[group][0] + ":"]
        for name in sorted(by_group[group]):
            flag = fv[name]
            value = flag.value
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            in_effect = _in_effect(name, fv)
            lines.append(f"  --{name}={'' if shown is None else shown}"
                         + (f"  (in effect: {in_effect})" if in_effect else ""))
            lines += textwrap.wrap(flag.help, 88, initial_indent="      ",
                                   subsequent_indent="      ")
    if hide_planted and "data" in by_group:
        lines += ["", "(the planted_* flags of the synthetic dataset are listed with "
                      "--dataset=planted or --helpfull)"]
    return "\n".join(lines)


def _in_effect(name: str, fv) -> str | None:
    """What a binary runs with for a flag left unset, where that is not the flag's default:
    the tables' robust row is the paper's eps for the dataset."""
    if name == "eps" and not fv["eps"].present and "table" in (_USES["groups"] or ()):
        eps, why = robust_row_eps(fv["dataset"].value)
        return f"{eps:g}, {why}"
    return None


def parse_flags(argv: list[str], fv=FLAGS) -> list[str]:
    """absl ``flags_parser`` for the binaries: expands flagfiles, parses, exits cleanly (no
    traceback) with the flag's message on a bad value; ``--help`` prints the binary's flags
    by group and exits 0."""
    wants_help = [a for a in argv[1:] if a in HELP]
    args = [a for a in argv[1:] if a not in HELP]
    FLAGFILES[:] = [a.split("=", 1)[1] for a in args
                    if a.startswith(("--flagfile=", "-flagfile="))]
    try:
        expanded = _expand(args, None, 0, None)
        _check_args(expanded, fv)
        rest = fv(argv[:1] + [a for a, _ in expanded])
    except flags.Error as e:
        print(f"error: {e}\n(--help lists this binary's flags)", file=sys.stderr)
        sys.exit(1)
    if wants_help:
        print(help_text(fv, full=any(a.endswith("helpfull") for a in wants_help)))
        sys.exit(0)
    return rest
