"""Store maintenance: hash every artifact (``verify_all``), list what no manifest owns
(``housekeeping``) and remove what nothing uses (``gc``); what ``experiments.store`` runs."""

from __future__ import annotations

import os

from entangle.runtime.atomic import listdir, orphaned, remove, temporaries_in, tree_size
from entangle.store import Store

RESULTS = "results"     # <root>/results/<table>/: the binaries' files beside the artifacts


def verify_all(store: Store) -> dict[str, list[str]]:
    """Hashes every finished artifact; each damaged one is moved aside (``quarantine``)
    and listed, {"kind/key": problems}, so the next run rebuilds it."""
    damaged = {}
    for kind in listdir(store.root):
        for key in store.list(kind):
            problems = store.verify(kind, key)
            if problems:
                damaged[f"{kind}/{key}"] = problems
                store.quarantine(kind, key, problems)
    return damaged


def housekeeping(store: Store) -> list[dict]:
    """Everything under the root that no manifest owns, each as {path, what, bytes,
    removable}: temporaries (removable when their owner is dead), quarantined copies,
    leftovers of broken locks, locks of dead processes and incomplete copies (removable), and
    resumable ``.partial`` state (removable when no live process holds its lock); temporaries
    of dead writers inside ``.partial`` state and results folders (removable)."""
    out = []
    for kind in listdir(store.root):
        folder = os.path.join(store.root, kind)
        if not os.path.isdir(folder):
            continue
        for name in listdir(folder):
            path = os.path.join(folder, name)
            what = removable = None
            if ".tmp-" in name and name.startswith("."):
                live = not orphaned(path)
                what = f"temporary ({'owner alive' if live else 'owner dead'})"
                removable = not live
            elif ".corrupt-" in name:
                what, removable = "quarantined (damaged) copy", True
            elif ".incomplete-" in name or ".lock.stale-" in name:
                what, removable = "leftover", True
            elif name.endswith(".lock") and not store.lock(kind, name[:-len(".lock")]).held():
                what, removable = "lock of a dead process", True
            elif name.endswith(".partial"):
                key = name[:-len(".partial")]
                busy = store.lock(kind, key).held()
                what = "resumable state" + (" (being built)" if busy else "")
                removable = not busy
                out += _orphan_temporaries(path)
            elif kind == RESULTS and os.path.isdir(path):
                out += _orphan_temporaries(path)   # a table's files, written by a killed run
            if what:
                out.append({"path": path, "what": what, "bytes": tree_size(path),
                            "removable": removable})
    return out


def _orphan_temporaries(folder: str) -> list[dict]:
    return [{"path": p, "what": "temporary (owner dead)", "bytes": tree_size(p),
             "removable": True} for p in temporaries_in(folder) if orphaned(p)]


def gc(store: Store, partial: bool = False) -> list[dict]:
    """Removes what ``housekeeping`` marks removable (resumable state only with
    ``partial``); returns what it removed."""
    gone = []
    for entry in housekeeping(store):
        if entry["removable"] and (partial or entry["what"] != "resumable state"):
            remove(entry["path"])
            gone.append(entry)
    return gone
