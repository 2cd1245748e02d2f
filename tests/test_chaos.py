"""The chaos benchmark at reduced size: killed processes, flipped bytes, nothing lost."""

import json
import os
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import chaos  # noqa: E402
import forkserver  # noqa: E402


@pytest.mark.slow
def test_killed_processes_and_flipped_bytes_leave_the_reference_table(tmp_path):
    """Two processes of a reduced Table 1 on one store, 2 kills (SIGKILL or SIGTERM) after
    their victims planned, with restarts, up to 2 stored files damaged: the table and every
    artifact equal a single-process run, no artifact was built twice at once, every damage
    was named, and --gc leaves nothing behind."""
    counts = chaos.run(processes=2, kills=2, rounds=1, corruptions=2, reduced=True, seed=0,
                       workdir=str(tmp_path), window=(0.5, 4.0), log=lambda m: None,
                       popen=forkserver.popen)
    shown = json.dumps({k: v for k, v in counts.items() if k != "corrupted"}, indent=1)
    assert counts["sigkill"] + counts["sigterm"] == 2, shown
    assert counts["corruptions_injected"] >= 1, shown
    assert counts["corruptions_detected"] == counts["corrupted_artifacts"] >= 1, shown
    assert counts["differences"] == [] and counts["double_builds"] == [], shown
    assert counts["left_after_gc"] == [] and counts["passed"], shown


def test_the_audit_finds_a_build_that_overlaps_a_live_one(tmp_path):
    """The double-build check itself: a second start while the first builder lives is a
    clash; after the first stopped or died, it is not."""
    log = tmp_path / "audit.jsonl"
    events = [("build", 1, 0.0), ("build", 2, 1.0),            # 2 while 1 builds: a clash
              ("stopped", 1, 2.0), ("stopped", 2, 2.5),
              ("build", 3, 3.0), ("build", 4, 5.0),            # 3 was killed at 4.0: fine
              ("built", 4, 6.0)]
    with open(log, "w") as f:
        for event, pid, t in events:
            f.write(json.dumps({"event": event, "kind": "models", "key": "k", "pid": pid,
                                "time": t}) + "\n")
    assert chaos.double_builds(str(log), {3: 4.0}) == ["models/k: pid 2 while pid 1"]
