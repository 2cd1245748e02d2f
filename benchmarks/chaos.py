"""Chaos benchmark: the store keeps its promises while processes die and bytes rot.

Runs a single-process reference of the smoke Table 1, then the same table with several
processes on one store, in rounds: processes are killed at random moments (SIGKILL and
SIGTERM mixed) and restarted; at the end of a round all are stopped and random bytes of random
stored files (artifacts, manifests, resumable state) are flipped, as soon as one exists. A
last round runs without kills, then the store's ``--verify`` hashes everything, a last run
rebuilds what it moved aside (if anything), and ``--gc --gc_partial`` cleans up (the
functions ``experiments.store`` prints, called here in-process: that binary's import of
TensorFlow would cost more than the check). Each kill falls at a random moment after its
victim has planned (imports done), where the store's promises are at stake. The
single-process reference runs beside the first round. It passes when

- the table (every cell and every per-image outcome), every model's weights and every
  dataset's files equal the reference's;
- no artifact was built by two live processes at once (``$ENTANGLE_AUDIT_LOG``);
- every injected corruption was detected (named by a run or by --verify);
- no lock, temporary, partial state or quarantined copy is left after --gc.

    python benchmarks/chaos.py                       # smoke scale, 4 processes, ~10 min
    python benchmarks/chaos.py --reduced --processes=2 --kills=2 --rounds=1   # the test's

Prints the counts (processes, kills, corruptions injected and detected, artifacts rebuilt,
wall time) and writes them as JSON (--json).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# every process skips the ETA probe: rates only shape the printed estimate, and a probe in
# each restarted process would double the run
SMOKE = ["--flagfile=flags/smoke.cfg", "--probe_rates=false"]
# the suite's size: the standard row on R_0 (a generator, a row model, one robustified set),
# tiny data, one epoch
REDUCED = ["--rows=standard", "--columns=0", "--epochs=1", "--planted_train_size=256",
           "--planted_test_size=64", "--robustify_steps=10", "--eval_strong_restarts=0",
           "--generator_report=false"]
STORE_KINDS = ("models", "datasets", "evals", "predictions")
PLANNED = "Plan: "      # a run's first line after its imports: from here on it uses the store


def table_command(workdir: str, reduced: bool) -> list[str]:
    return [sys.executable, "-u", "-m", "experiments.table1", *SMOKE,
            *(REDUCED if reduced else []), f"--workdir={workdir}"]


class Fleet:
    """The processes of one store: started, killed and restarted, their output kept."""

    def __init__(self, command: list[str], logs: str, env: dict, popen=subprocess.Popen):
        self.command, self.logs, self.env, self.popen = command, logs, env, popen
        self.started, self.ended = 0, {}      # pid -> when it died or exited
        self.live: list[subprocess.Popen] = []
        self.log_of: dict[int, str] = {}
        os.makedirs(logs, exist_ok=True)

    def start(self) -> subprocess.Popen:
        self.started += 1
        log = os.path.join(self.logs, f"{self.started:03d}.log")
        with open(log, "w") as out:
            proc = self.popen(self.command, cwd=ROOT, env=self.env, stdout=out,
                              stderr=subprocess.STDOUT)
        self.log_of[proc.pid] = log
        self.live.append(proc)
        return proc

    def running(self) -> list[subprocess.Popen]:
        self.reap()
        return self.live

    def planned(self) -> list[subprocess.Popen]:
        """The live processes past their imports (they have printed their plan)."""
        self.reap()
        out = []
        for p in self.live:
            with open(self.log_of[p.pid], errors="replace") as f:
                if PLANNED in f.read():
                    out.append(p)
        return out

    def reap(self) -> None:
        for p in list(self.live):
            if p.poll() is not None:
                self.ended.setdefault(p.pid, time.time())
                self.live.remove(p)

    def kill(self, proc: subprocess.Popen, sig: int, grace: float = 60.0) -> None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()         # SIGTERM promised a stop within seconds: this is a failure
            proc.wait()
            raise RuntimeError(f"pid {proc.pid} ignored {signal.Signals(sig).name} for "
                               f"{grace:.0f} s")
        self.ended[proc.pid] = time.time()
        self.live.remove(proc)

    def wait_all(self, timeout: float) -> list[int]:
        codes = []
        for p in list(self.live):
            codes.append(p.wait(timeout))
            self.ended[p.pid] = time.time()
            self.live.remove(p)
        return codes


def stored_files(workdir: str) -> list[str]:
    """Files a corruption may hit: finished artifacts (manifests included) and resumable
    state, not temporaries being written, caches or results."""
    out = []
    for kind in STORE_KINDS:
        for path in glob.glob(os.path.join(workdir, kind, "*", "**"), recursive=True):
            name = os.path.basename(path)
            if not os.path.isfile(path) or name.endswith(".tmp") or ".tmp-" in path:
                continue
            artifact = os.path.relpath(path, os.path.join(workdir, kind)).split(os.sep)[0]
            if artifact.endswith(".partial") and os.path.exists(os.path.join(
                    workdir, kind, artifact[:-len(".partial")], "manifest.json")):
                continue   # the state of a finished artifact: never read again, --gc's
            out.append(path)
    return sorted(out)


def flip(path: str, rng: random.Random) -> int:
    size = os.path.getsize(path)
    at = rng.randrange(size)
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
    return at


def artifact_of(path: str, workdir: str) -> str:
    """'kind/key' of a stored file (a .partial state's file: 'kind/key.partial')."""
    rel = os.path.relpath(path, workdir).split(os.sep)
    return f"{rel[0]}/{rel[1]}"


def detections(text: str) -> set[str]:
    """The artifacts (or partial states) the runs and --verify named as damaged."""
    named = set(re.findall(r"damaged artifact (\w+/[\w.-]+)", text))
    named |= {f"{k}/{key}" for k, key in re.findall(
        r"WARNING: damaged [^\n]*?/(\w+)/([\w.-]+\.partial)", text)}
    return named


def double_builds(audit: str, ended: dict) -> list[str]:
    """Artifacts whose build started while another process was building it: from its start
    to its "built" or "stopped" event, or, killed by SIGKILL, to its death."""
    if not os.path.exists(audit):
        return []
    open_builds, clashes = {}, []
    events = [json.loads(line) for line in open(audit)]
    for e in sorted(events, key=lambda e: e["time"]):
        key = f"{e['kind']}/{e['key']}"
        builders = open_builds.setdefault(key, {})
        for pid in [p for p in builders if ended.get(p, float("inf")) <= e["time"]]:
            del builders[pid]           # its builder died: the lock is free again
        if e["event"] == "build":
            if builders:
                clashes.append(f"{key}: pid {e['pid']} while pid {next(iter(builders))}")
            builders[e["pid"]] = e["time"]
        else:
            builders.pop(e["pid"], None)
    return clashes


def weights(path: str) -> dict:
    """Every weight array of a .keras file (its model.weights.h5), by HDF5 path."""
    import h5py
    import numpy as np

    out = {}
    with zipfile.ZipFile(path) as z, tempfile.TemporaryDirectory() as tmp:
        z.extract("model.weights.h5", tmp)
        with h5py.File(os.path.join(tmp, "model.weights.h5")) as h:
            h.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj))
                         if isinstance(obj, h5py.Dataset) else None)
    return out


def compare(ref: str, work: str) -> list[str]:
    """How the chaos store's table and artifacts differ from the reference's (empty: none)."""
    import numpy as np

    diffs = []
    tables = {w: glob.glob(os.path.join(w, "results", "table1-*", "table.json")) for w in
              (ref, work)}
    if len(tables[ref]) != 1 or len(tables[work]) != 1:
        return [f"expected one table each; found {len(tables[ref])} and {len(tables[work])}"]
    a, b = (json.load(open(tables[w][0])) for w in (ref, work))
    if a["cells"] != b["cells"]:
        diffs.append("table cells differ")
    za, zb = (np.load(os.path.join(os.path.dirname(tables[w][0]), "outcomes.npz"))
              for w in (ref, work))
    if set(za.files) != set(zb.files) or any(not np.array_equal(za[k], zb[k]) for k in za.files):
        diffs.append("per-image outcomes differ")
    for kind in ("models", "datasets"):
        keys = {w: sorted(k for k in os.listdir(os.path.join(w, kind)) if not k.startswith(".")
                          and os.path.exists(os.path.join(w, kind, k, "manifest.json")))
                for w in (ref, work)}
        if keys[ref] != keys[work]:
            diffs.append(f"{kind} differ: {sorted(set(keys[ref]) ^ set(keys[work]))}")
            continue
        for key in keys[ref]:
            if kind == "models":
                wa, wb = (weights(os.path.join(w, kind, key, "model.keras")) for w in (ref, work))
                if wa.keys() != wb.keys() or any(not np.array_equal(wa[k], wb[k]) for k in wa):
                    diffs.append(f"models/{key}: weights differ")
            else:
                fa, fb = (json.load(open(os.path.join(w, kind, key, "manifest.json")))["files"]
                          for w in (ref, work))
                if fa != fb:
                    diffs.append(f"datasets/{key}: files differ")
    return diffs


def leftovers(workdir: str) -> list[str]:
    """Locks, temporaries, partial state and quarantined copies under the store."""
    out = []
    for folder, dirs, files in os.walk(workdir):
        for name in dirs + files:
            if re.search(r"\.lock$|\.tmp-|\.tmp$|\.partial$|\.corrupt-|\.stale-|\.incomplete-",
                         name):
                out.append(os.path.join(folder, name))
    return out


def run(processes: int = 4, kills: int = 20, rounds: int = 4, corruptions: int = 3,
        reduced: bool = False, seed: int = 0, workdir: str | None = None,
        window: tuple[float, float] = (1.0, 8.0), log=print, popen=subprocess.Popen) -> dict:
    """The benchmark (see the module docstring); returns its counts and verdicts.
    ``window``: seconds from a victim's plan to its kill, drawn uniformly; ``popen`` starts
    each process (``subprocess.Popen``'s signature; the tests pass their fork server's)."""
    from entangle.store import maintenance, Store

    rng = random.Random(seed)
    base = workdir or tempfile.mkdtemp(prefix="entangle-chaos-")
    ref, work = os.path.join(base, "reference"), os.path.join(base, "chaos")
    env = {**os.environ, "ENTANGLE_CACHE": os.path.join(base, "cache"),
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.time()
    log(f"[chaos] reference: one process in {ref}, beside the first round")
    reference = popen(table_command(ref, reduced), cwd=ROOT, env=env,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    audit = os.path.join(base, "audit.jsonl")
    fleet = Fleet(table_command(work, reduced), os.path.join(base, "logs"),
                  {**env, "ENTANGLE_AUDIT_LOG": audit}, popen)
    counts = {"processes": processes, "started": 0, "sigkill": 0, "sigterm": 0,
              "corruptions_injected": 0, "corrupted": []}
    per_round = [kills // rounds + (r < kills % rounds) for r in range(rounds)]
    for r, n_kills in enumerate(per_round):
        for _ in range(processes):
            fleet.start()
        for _ in range(n_kills):
            victims = _wait_for(fleet.planned, 600, "a process to plan")
            time.sleep(rng.uniform(*window))
            fleet.reap()
            victims = [p for p in victims if p in fleet.live] or fleet.live
            if not victims:
                break
            sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
            fleet.kill(rng.choice(victims), sig)
            counts["sigkill" if sig == signal.SIGKILL else "sigterm"] += 1
            fleet.start()
        # a round ends once something is stored to damage; everyone stops at a safe point
        _wait_for(lambda: stored_files(work) or not fleet.running(), 600, "a stored file")
        for p in list(fleet.live):
            fleet.kill(p, signal.SIGTERM)
        files = stored_files(work)
        for path in rng.sample(files, min(corruptions, len(files))):
            at = flip(path, rng)
            counts["corruptions_injected"] += 1
            counts["corrupted"].append({"file": os.path.relpath(path, work), "byte": at,
                                        "artifact": artifact_of(path, work)})
        log(f"[chaos] round {r + 1}/{rounds}: {n_kills} kills, {len(files)} stored files, "
            f"{min(corruptions, len(files))} corrupted")
    for _ in range(processes):          # the last round runs to the end
        fleet.start()
    codes = fleet.wait_all(3600)
    reference_code = reference.wait(3600)
    store = Store(work, create=False)
    damaged = maintenance.verify_all(store)
    # what --verify moved aside is rebuilt by one more run
    final = subprocess.run(table_command(work, reduced) if damaged else ["true"],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    maintenance.gc(store, partial=True)
    text = "".join(open(p).read() for p in sorted(glob.glob(os.path.join(fleet.logs, "*"))))
    text += final.stdout + final.stderr
    named = detections(text) | set(damaged)
    injected = {c["artifact"] for c in counts["corrupted"]}
    builds = [json.loads(line) for line in open(audit)] if os.path.exists(audit) else []
    built = [b for b in builds if b["event"] == "built"]
    counts.update(
        started=fleet.started, last_round_exit_codes=codes, final_exit_code=final.returncode,
        reference_exit_code=reference_code, corrupted_artifacts=len(injected),
        corruptions_detected=len(injected & named), undetected=sorted(injected - named),
        found_by_verify=sorted(damaged), artifacts_built=len(built),
        artifacts_rebuilt=len(built) - len({(b["kind"], b["key"]) for b in built}),
        double_builds=double_builds(audit, fleet.ended), differences=compare(ref, work),
        left_after_gc=leftovers(work), wall_seconds=round(time.time() - start, 1))
    counts["passed"] = (not counts["double_builds"] and not counts["differences"]
                        and not counts["undetected"] and not counts["left_after_gc"]
                        and final.returncode == 0 and reference_code == 0
                        and "Traceback" not in text and all(c == 0 for c in codes))
    if not workdir and counts["passed"]:
        shutil.rmtree(base, ignore_errors=True)
    else:
        counts["kept"] = base
    return counts


def _wait_for(condition, timeout: float, what: str):
    """Polls ``condition`` until it returns something true; its value."""
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"no {what} after {timeout:.0f} s")


def summary(c: dict) -> str:
    return (f"processes {c['processes']} at a time, {c['started']} started; kills "
            f"{c['sigkill'] + c['sigterm']} ({c['sigkill']} SIGKILL, {c['sigterm']} SIGTERM); "
            f"corruptions injected {c['corruptions_injected']} in {c['corrupted_artifacts']} "
            f"artifacts, detected {c['corruptions_detected']} of those; artifacts built "
            f"{c['artifacts_built']} ({c['artifacts_rebuilt']} rebuilt); double builds "
            f"{len(c['double_builds'])}; differences from the reference "
            f"{len(c['differences'])}; left after --gc {len(c['left_after_gc'])}; wall "
            f"{c['wall_seconds']:.0f} s (the reference beside it): "
            f"{'PASSED' if c['passed'] else 'FAILED'}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--corruptions", type=int, default=3, help="files flipped per round")
    p.add_argument("--reduced", action="store_true", help="the suite's size (two rows, "
                   "two columns, tiny data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", default="1,8", help="seconds from a victim's plan to its "
                   "kill: LOW,HIGH")
    p.add_argument("--workdir", help="keep the stores here (default: a temporary folder, "
                   "removed when the run passes)")
    p.add_argument("--json", help="write the counts here")
    a = p.parse_args()
    lo, hi = (float(t) for t in a.window.split(","))
    counts = run(a.processes, a.kills, a.rounds, a.corruptions, a.reduced, a.seed, a.workdir,
                 (lo, hi))
    print(summary(counts))
    for key in ("undetected", "double_builds", "differences", "left_after_gc"):
        for line in counts[key]:
            print(f"  {key}: {line}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(counts, f, indent=1)
    sys.exit(0 if counts["passed"] else 1)


if __name__ == "__main__":
    main()
