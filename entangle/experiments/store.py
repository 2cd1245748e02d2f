"""What the artifact store holds, and what no manifest owns; --gc removes the latter.

    python -m experiments.store --workdir=entangle_work          # list
    python -m experiments.store --workdir=entangle_work --gc     # remove orphans
    python -m experiments.store --workdir=entangle_work --verify # hash every artifact
    python -m experiments.store --export=all --export_dir=shared   # models to share
    python -m experiments.store --import_models=shared             # ... added to a store
"""

from entangle.experiments.common import configure_environment

configure_environment()

import sys  # noqa: E402

from absl import app  # noqa: E402

from entangle import flags as entangle_flags, store as store_lib  # noqa: E402
from entangle.store import exchange, maintenance  # noqa: E402
from entangle.experiments import common  # noqa: E402

FLAGS = entangle_flags.FLAGS
entangle_flags.define_all()
entangle_flags.uses("store", ("output", "store"))


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.gc_partial and not FLAGS.gc:
        raise app.UsageError("--gc_partial applies with --gc")
    root = FLAGS.workdir or store_lib.default_workdir()
    try:
        store = store_lib.Store(root, create=bool(FLAGS.import_models))
        print(f"store {store.root}")
        for kind, (count, size) in store.summary().items():
            print(f"  {kind:<12} {count:5d} artifacts  {_mib(size)}")
        if FLAGS.import_models:
            print("\nimport:")
            for key, what in exchange.import_models(store, FLAGS.import_models):
                print(f"  models/{key}: {what}")
        if FLAGS.export:
            print("\nexport:")
            for path in exchange.export_models(store, FLAGS.export, FLAGS.export_dir):
                print(f"  {path}")
        damaged = maintenance.verify_all(store) if FLAGS.verify else {}
        if FLAGS.verify:
            print(f"\nverified: {sum(c for c, _ in store.summary().values()) + len(damaged)} "
                  f"artifacts, {len(damaged)} damaged (moved aside; the next run rebuilds "
                  f"them)")
        extra = maintenance.housekeeping(store)
        print(f"\nnot owned by a manifest: {len(extra)}")
        for e in extra:
            print(f"  {e['what']:<40} {_mib(e['bytes']):>12}  {e['path']}")
        if FLAGS.gc:
            gone = maintenance.gc(store, partial=FLAGS.gc_partial)
            print(f"\nremoved {len(gone)} ({_mib(sum(e['bytes'] for e in gone))})")
            kept = [e for e in extra if e["path"] not in {g["path"] for g in gone}]
            if kept:
                print(f"kept {len(kept)}: in use, or resumable state (--gc_partial removes "
                      f"the latter)")
    except exchange.BundleError as e:
        common.fail(str(e), code=1)
    except FileNotFoundError as e:
        common.fail(f"{e.filename}: no such store (--workdir)", code=1)
    except OSError as e:
        common.fail(f"cannot write {store_lib.describe_os_error(e)}", code=1)
    if damaged:
        sys.exit(1)


def run(argv=None):
    app.run(main, argv=argv or sys.argv, flags_parser=entangle_flags.parse_flags)


if __name__ == "__main__":
    run()
