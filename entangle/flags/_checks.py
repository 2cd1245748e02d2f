"""Flag value parsing and validators shared by the flag groups: per-kind values, kind lists,
L2 radii, eps columns."""

from __future__ import annotations

from absl import flags

from entangle.core import models
from entangle.stats import paper
from entangle.studies import pipeline

FLAGS = flags.FLAGS
MODEL_KINDS = pipeline.KINDS + ("victim",)
VICTIM_WEIGHTS = ("imagenet", "none")


def per_kind(text: str, kind: str, cast=str):
    """The value for ``kind`` in 'default,kind:value,...' (ValueError on a bad entry).

    A victim architecture name (``xception``) is a kind of its own that falls back to
    ``victim``: '--epochs=100,victim:6,xception:2'.
    """
    default, overrides = None, {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if ":" in item:
            k, v = item.split(":", 1)
            if k not in MODEL_KINDS + models.VICTIMS:
                raise ValueError(f"unknown model kind {k!r} (allowed: {', '.join(MODEL_KINDS)}"
                                 f", or a victim name)")
            overrides[k] = cast(v)
        else:
            default = cast(item)
    value = overrides.get(kind)
    if value is None and kind in models.VICTIMS:
        value = overrides.get("victim")
    if value is None:
        value = default
    if value is None:
        raise ValueError(f"no value for model kind {kind!r} in {text!r}")
    return value


def kinds_on(text: str, kind: str) -> bool:
    """Whether ``kind`` is in a kind list ('all', 'none' or 'standard,robust,...')."""
    items = {s.strip() for s in text.split(",") if s.strip()}
    bad = items - set(MODEL_KINDS) - {"all", "none"}
    if bad:
        raise ValueError(f"unknown model kinds {sorted(bad)} (allowed: all, none, "
                         f"{', '.join(MODEL_KINDS)})")
    return "all" in items or kind in items


def validator(name: str, check, message: str, flag_values=FLAGS):
    flags.register_validator(name, check, message=f"--{name}: {message}",
                             flag_values=flag_values)


def _eps_ok(allow_inf: bool):
    """Validator of an L2 radius: a number >= 0, not NaN, finite unless ``allow_inf``."""
    def check(value):
        if value is None:
            return True
        return value == value and value >= 0 and (allow_inf or value != float("inf"))
    return check


def seed_list_ok(values) -> bool:
    """Distinct whole numbers in [0, 2**31): what every seed of the pipeline accepts."""
    if not all(t.strip().isdigit() for t in values):
        return False
    seeds = [int(t) for t in values]
    return all(s < 2 ** 31 for s in seeds) and len(set(seeds)) == len(seeds)


def eps_validators(fv, names: dict):
    """The same check for every ``*_eps`` flag: {name: whether inf (no bound) is allowed}."""
    for name, allow_inf in names.items():
        validator(name, _eps_ok(allow_inf), "must be a number >= 0 (an L2 radius in [0, 1] "
                 f"pixel units){'; inf for no bound' if allow_inf else ', finite'}", fv)


def accepts(check):
    """Validator from a library check that raises ValueError on bad input (so the flag and
    the library refuse the same values)."""
    def ok(value):
        try:
            check(value)
        except ValueError:
            return False
        return True
    return ok


def per_kind_ok(cast, kinds=MODEL_KINDS, minimum=None):
    """Validator: every entry parses with ``cast``, every kind in ``kinds`` has a value, and
    each is > 0 (or >= ``minimum`` if given)."""
    def check(text):
        try:
            values = [per_kind(text, k, cast) for k in kinds]
        except ValueError:
            return False
        return all(v > 0 if minimum is None else v >= minimum for v in values)
    return check


def kinds_ok(text):
    try:
        kinds_on(text, "standard")
        return True
    except ValueError:
        return False


def parse_columns(text: str) -> tuple[float, ...]:
    if text == "paper":
        return paper.PAPER_COLUMNS
    if text == "extended":
        return paper.EXTENDED_COLUMNS
    return tuple(_eps_value(t) for t in text.split(",") if t.strip())


def _eps_value(text: str) -> float:
    text = text.strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def columns_ok(text):
    try:
        cols = parse_columns(text)
        return bool(cols) and all(c >= 0 for c in cols)
    except (ValueError, ZeroDivisionError):
        return False
