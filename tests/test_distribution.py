"""Device selection for one process per GPU (--gpu), on a mocked device count: no GPU is
needed, and what TensorFlow is told is checked apart (configure_gpus on this CPU)."""

import json
import subprocess

import pytest
from conftest import ENV, popen_python, run_binary, run_python

from entangle.runtime import distribution

HOLD = """
import json, sys, time
from entangle.runtime import distribution
indices, why = distribution.choose_gpus("auto", int(sys.argv[2]), lock_dir=sys.argv[1], env={})
print(json.dumps(indices), flush=True)
sys.stdin.read()          # hold the GPU until the test lets go
"""


def test_processes_on_one_store_take_distinct_gpus_and_a_dead_ones_is_taken_over(tmp_path):
    procs = [popen_python("-c", HOLD, str(tmp_path), "3", stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
             for _ in range(3)]
    taken = [json.loads(p.stdout.readline()) for p in procs]
    assert sorted(i for t in taken for i in t) == [0, 1, 2]
    # a fourth process finds every GPU held and says so
    with pytest.raises(RuntimeError, match="all 3 GPUs of this host are held"):
        distribution.choose_gpus("auto", 3, lock_dir=str(tmp_path), env={})
    first = procs[taken.index([1])]
    first.kill()
    first.wait()
    # its lock names a dead process: the GPU it held is free again
    assert distribution.choose_gpus("auto", 3, lock_dir=str(tmp_path), env={})[0] == [1]
    for p in procs:
        if p.poll() is None:
            p.communicate("")


def test_a_local_rank_picks_the_gpu_and_other_choices_mean_what_they_say():
    assert distribution.choose_gpus("auto", 4, env={"SLURM_LOCALID": "2"}) == \
        ([2], "local rank SLURM_LOCALID=2")
    assert distribution.choose_gpus("auto", 4, env={"LOCAL_RANK": "5"})[0] == [1]  # wraps
    assert distribution.choose_gpus("all", 3, env={})[0] == [0, 1, 2]
    assert distribution.choose_gpus("none", 3, env={})[0] == []
    assert distribution.choose_gpus("0,2", 3, env={})[0] == [0, 2]
    assert distribution.choose_gpus("auto", 0, env={})[0] == []          # a CPU machine
    with pytest.raises(ValueError, match="3 GPUs are visible .*no GPU 3"):
        distribution.choose_gpus("3", 3, env={})
    for bad in ("", "x", "-1", "0,0", "1.5"):
        with pytest.raises(ValueError, match="--gpu must be all"):
            distribution.parse_gpus(bad)


def test_the_gpu_flag_is_checked_and_harmless_without_a_gpu(tmp_path):
    bad = run_binary("table1", "--flagfile=flags/smoke.cfg", "--gpu=0,x", "--estimate",
                     f"--workdir={tmp_path}")
    assert bad.returncode != 0 and "--gpu" in bad.stderr and "SLURM_LOCALID" in bad.stderr
    missing = run_binary("table1", "--flagfile=flags/smoke.cfg", "--gpu=1", "--estimate",
                         f"--workdir={tmp_path}")
    assert missing.returncode != 0 and "no GPU is visible; there is no GPU 1" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert distribution.configure_gpus("auto", str(tmp_path), log=print) == []


TF32 = """
import sys
import tensorflow as tf
from entangle import flags as ef
from entangle.experiments import common
ef.define_all(); ef.parse(sys.argv[1:])
print("default", tf.config.experimental.tensor_float_32_execution_enabled())
print("run", common.run_main(["x"], tf.config.experimental.tensor_float_32_execution_enabled))
"""


@pytest.mark.parametrize("extra, allowed", [((), False), (("--tf32",), True)])
def test_tf32_is_off_under_the_paper_flagfile_unless_asked(extra, allowed):
    """TensorFlow allows TF32 by default (a GPU's float32 stem would then round small-eps
    perturbations away); a binary's start-up turns it off unless --tf32."""
    proc = run_python("-c", TF32, "--flagfile=flags/cifar10_paper.cfg", *extra, timeout=300,
                      env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "default True" in proc.stdout               # what a bare TensorFlow would do
    assert f"run {allowed}" in proc.stdout
