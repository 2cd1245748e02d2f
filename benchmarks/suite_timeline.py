"""Where the test suite's wall time goes: each worker's tests in order, the time a worker
sat waiting on a smoke store another worker was building, and the time it sat idle at the
end. Runs the README's test command with $ENTANGLE_TEST_TIMELINE set (tests/conftest.py
writes one line per test and per wait), or reads a timeline an earlier run left.

    python benchmarks/suite_timeline.py                 # runs the suite
    python benchmarks/suite_timeline.py --read=FILE     # a timeline already written
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path: str) -> list[tuple]:
    rows = []
    with open(path) as f:
        for line in f:
            worker, kind, name, start, end = line.rstrip("\n").split("\t")
            rows.append((worker, kind, name, float(start), float(end)))
    return rows


def summarise(rows: list[tuple], wall: float | None = None, top: int = 15) -> str:
    tests = [r for r in rows if r[1] == "test"]
    waits = [r for r in rows if r[1] == "wait"]
    t0 = min(r[3] for r in tests)
    t1 = max(r[4] for r in tests)
    by_worker = collections.defaultdict(list)
    for r in tests:
        by_worker[r[0]].append(r)
    lines = [f"tests: {len(tests)}; first start to last end: {t1 - t0:.0f} s"
             + (f"; the whole command: {wall:.0f} s" if wall else "")]
    idle_total = 0.0
    for worker in sorted(by_worker):
        mine = by_worker[worker]
        busy = sum(r[4] - r[3] for r in mine)
        waited = sum(r[4] - r[3] for r in waits if r[0] == worker)
        tail = t1 - max(r[4] for r in mine)
        idle_total += waited + tail
        lines.append(f"  {worker}: {len(mine)} tests, {busy:.0f} s in tests, of which "
                     f"{waited:.0f} s waiting on another worker's smoke store; idle at the "
                     f"end {tail:.0f} s")
    span = (t1 - t0) * len(by_worker)
    lines.append(f"worker-seconds: {span:.0f}; waiting or idle: {idle_total:.0f} "
                 f"({100 * idle_total / span:.0f} %)")
    for r in sorted(waits, key=lambda r: r[3] - r[4])[:5]:
        lines.append(f"  wait {r[4] - r[3]:6.1f} s  {r[0]}  {r[2]}")
    per_file = collections.Counter()
    for r in tests:
        per_file[r[2].split("::")[0]] += r[4] - r[3]
    lines.append("by file (worker-seconds):")
    lines += [f"  {s:7.1f}  {name}" for name, s in per_file.most_common(top)]
    lines.append("slowest tests (setup included):")
    lines += [f"  {r[4] - r[3]:7.1f}  {r[0]}  {r[2]}"
              for r in sorted(tests, key=lambda r: r[3] - r[4])[:top]]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--read", help="a timeline file an earlier run wrote")
    parser.add_argument("--keep", help="write the new run's timeline here")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest")
    args = parser.parse_args()
    wall = None
    path = args.read
    if path is None:
        path = args.keep or os.path.join(tempfile.mkdtemp(), "timeline.tsv")
        start = time.time()
        subprocess.run([sys.executable, "-m", "pytest", "-q", *args.pytest_args], cwd=ROOT,
                       env={**os.environ, "ENTANGLE_TEST_TIMELINE": path})
        wall = time.time() - start
    print(summarise(read(path), wall))


if __name__ == "__main__":
    main()
