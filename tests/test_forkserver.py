"""The tests' fork server: a forked command behaves as ``python`` started afresh would, in what
the tests read of it (argv, cwd, environment, streams, exit status, signals, timeouts), and
starts TensorFlow's runtime itself."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ENV, ROOT, popen_python, run_binary, run_python

import forkserver

SHOW = """
import json, os, sys
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)   # refused once the runtime started
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0],
                  "env": os.environ.get("ENTANGLE_PROBE"), "stdin": sys.stdin.read(),
                  "name": __name__, "threads": tf.config.threading
                  .get_intra_op_parallelism_threads()}))
print("to stderr", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


def test_a_forked_command_sees_what_a_new_interpreter_would(tmp_path):
    env = {**ENV, "ENTANGLE_PROBE": "x"}
    forked = run_python("-c", SHOW, "3", "b", cwd=tmp_path, env=env, input="in")
    fresh = run_python("-c", SHOW, "3", "b", cwd=tmp_path, env=env, input="in", fresh=True)
    assert forked.returncode == fresh.returncode == 3
    assert forked.stdout == fresh.stdout
    assert forked.stdout.count('"threads": 1') == 1 and '"env": "x"' in forked.stdout
    assert forked.stderr.strip().splitlines()[-1] == "to stderr"


def test_a_forked_binary_prints_and_exits_as_the_binary_does():
    forked, fresh = (run_binary("train", "--flagfile=flags/smoke.cfg", "--epochs=0", fresh=f)
                     for f in (False, True))
    assert forked.returncode == fresh.returncode == 1           # a usage error, exit 1
    assert forked.stderr.strip().splitlines()[-1] == fresh.stderr.strip().splitlines()[-1]
    forked, fresh = (run_binary("train", "--helpshort", fresh=f) for f in (False, True))
    assert forked.returncode == fresh.returncode == 0 and forked.stdout == fresh.stdout


def test_signals_pipes_and_timeouts_reach_the_forked_child(tmp_path):
    proc = popen_python("-c", "import sys, time; print(input(), flush=True); time.sleep(60)",
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=ENV)
    assert isinstance(proc, forkserver.Forked) and proc.pid != os.getpid()
    proc.stdin.write("ping\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "ping\n" and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM
    with pytest.raises(subprocess.TimeoutExpired):
        run_python("-c", "import time; time.sleep(60)", env=ENV, timeout=1)


def test_an_import_time_difference_gets_its_own_server_and_other_commands_run_fresh():
    base = {**ENV, "ENTANGLE_PROBE": "a"}
    assert forkserver._import_env(base) == forkserver._import_env({**ENV, "ENTANGLE_PROBE": "b"})
    assert forkserver._import_env(base) != forkserver._import_env({**base, "KERAS_HOME": "/k"})
    # a -m binary that leaves the start-up variables unset imports as it would set them
    plain = {k: v for k, v in base.items() if k not in forkserver._IMPORT_DEFAULTS}
    assert forkserver._import_env(plain) == forkserver._import_env(
        {**plain, **forkserver._IMPORT_DEFAULTS})
    proc = forkserver.popen(["bash", "-c", "exit 4"], cwd=ROOT)
    assert isinstance(proc, subprocess.Popen) and proc.wait() == 4
    assert forkserver.run([sys.executable, "-c", "pass"], cwd=ROOT, fresh=True).returncode == 0


def test_unbuffered_output_into_a_file_the_caller_has_closed(tmp_path):
    """``python -u`` into a log file that the caller closes once the process started (what the
    chaos benchmark does): each line is in the file while the child still runs."""
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = popen_python("-u", "-c", "import time; print('planned'); time.sleep(60)",
                            stdout=out, stderr=subprocess.STDOUT, env=ENV)
    assert isinstance(proc, forkserver.Forked)
    for _ in range(300):
        if log.read_text() == "planned\n":
            break
        time.sleep(0.1)
    assert log.read_text() == "planned\n" and proc.poll() is None
    proc.kill()
    assert proc.wait(30) == -signal.SIGKILL
