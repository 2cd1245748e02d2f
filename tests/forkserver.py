"""Python processes for the tests without paying for ``import tensorflow`` each time.

About 85 of the suite's tests start ``python -m experiments.<binary>`` or ``python -c``, and
each such process spent 5-6 s importing TensorFlow, Keras and the package before its first
line of work: a third of the suite's time on the 2-core AMD EPYC. A fork server does those
imports once per pytest worker and forks a child per command. The child is a real process (its
own pid, exit code, signals, files, pipes and environment) that runs the command's module or
code as ``python`` would, and exits as the interpreter does (threads joined, atexit run).
TensorFlow's runtime (devices, thread pools) is never started in the server, so each child
starts it fresh, as a new interpreter does.

What a child cannot show, a test asks for with ``fresh=True`` (a new interpreter): TensorFlow's
own start-up output, and anything decided by the environment while modules import. A command
whose import-time environment differs from every server's gets a server of its own, and a
command that is not ``python [-u] -m``/``-c`` always runs as a new process.

Kept here rather than taken from a library: pytest-xdist's workers and ``multiprocessing``'s
forkserver both start from a fresh interpreter per task or run Python callables, not
``python -m`` command lines with their own argv, cwd, environment and exit status.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading

# read when a command runs, not while modules import, so commands of one server may differ
# in them: the package's own variables, and what TensorFlow reads when its runtime starts (in
# the child): thread counts, the cluster, the visible GPUs
_CALL_TIME = ("ENTANGLE_", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_CONFIG",
              "CUDA_VISIBLE_DEVICES")

# What ``python -m experiments.<binary>`` sets before TensorFlow loads
# (``entangle.experiments.common.configure_environment``), and TensorFlow's own defaults for a
# ``-c`` script: a command that leaves them unset imports as if they had these values.
_IMPORT_DEFAULTS = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SERVER = r"""
import atexit, gc, json, os, runpy, select, sys, threading, traceback, types

import numpy as np
import tensorflow as tf
import keras
import tensorflow_datasets as tfds
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot
import scipy.stats
import entangle.flags
from entangle.studies import (entanglement, figures, mistakes, planted_study, projections,
                              transfer)
from entangle.report import figures, mistakes, planted, transfer
from entangle.experiments import common
from absl import app, flags
from tensorflow.python.eager import context

assert not context.context()._initialized, "the server must not start TensorFlow's runtime"


def child(request):
    for fd, path in enumerate(request["files"]):
        f = os.open(path, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_APPEND)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    np.random.seed(None)              # a new interpreter's unseeded state, not the server's
    if request["unbuffered"]:
        sys.stdout.reconfigure(write_through=True)
        sys.stderr.reconfigure(write_through=True)
    flag, target, *args = request["argv"]
    code = 0
    try:
        if flag == "-m":
            sys.argv = [target, *args]
            sys.path[0] = os.getcwd()
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.argv = ["-c", *args]
            sys.path[0] = ""
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(target, "<string>", "exec"), main.__dict__)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:                              # the interpreter's exit: threads, atexit, flush
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        code = code or 1
    os._exit(code & 0xFF)


def serve(replies):
    children = {}                     # pidfd -> pid
    requests = os.fdopen(0, "rb", buffering=0)
    pending = b""
    while True:
        ready = select.select([0, *children], [], [])[0]
        for fd in ready:
            if fd == 0:
                chunk = os.read(0, 1 << 20)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    request = json.loads(line)
                    sys.stdout.flush()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        replies.close()
                        child(request)
                    children[os.pidfd_open(pid)] = pid
                    replies.write(json.dumps({"id": request["id"], "pid": pid}) + "\n")
                    replies.flush()
            else:
                pid = children.pop(fd)
                os.close(fd)
                status = os.waitpid(pid, 0)[1]
                replies.write(json.dumps({"exit": pid,
                                          "returncode": os.waitstatus_to_exitcode(status)})
                              + "\n")
                replies.flush()


gc.collect()
gc.freeze()       # the children's collections skip the imports' objects: no pages copied
serve(os.fdopen(int(sys.argv[1]), "w"))
"""


def _import_env(env: dict) -> tuple:
    """The part of ``env`` that can change what importing the package does."""
    full = {**_IMPORT_DEFAULTS, **env}
    return tuple(sorted((k, v) for k, v in full.items() if not k.startswith(_CALL_TIME)))


class _Server:
    """One fork server: a ``python -c`` that has done the imports, fed requests on its stdin,
    answering on a pipe of its own: the pid of each child it forks, and each child's exit
    status as it ends. Its own output (the imports' noise, or why it died) goes to a file."""

    def __init__(self, env: dict):
        read, write = os.pipe()
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(write)],
                                     stdin=subprocess.PIPE, stdout=self._log,
                                     stderr=subprocess.STDOUT, pass_fds=(write,),
                                     env={**_IMPORT_DEFAULTS, **env},
                                     cwd=_ROOT)     # as the tests' commands: "" is the root
        os.close(write)
        self._replies = os.fdopen(read)
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._started: dict = {}      # request id -> pid
        self._exits: dict = {}        # pid -> return code
        self._next = 0
        self._dead = False
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self):
        for line in self._replies:
            reply = json.loads(line)
            with self._cond:
                if "pid" in reply:
                    self._started[reply["id"]] = reply["pid"]
                else:
                    self._exits[reply["exit"]] = reply["returncode"]
                self._cond.notify_all()
        with self._cond:
            self._dead = True
            self._cond.notify_all()

    def start(self, argv: list, cwd: str, env: dict, files: list) -> int:
        """Forks a child running ``python argv`` (``-u`` first, or not) with fds 0-2 opened
        from ``files``; its pid."""
        unbuffered = argv[0] == "-u"
        argv = argv[1:] if unbuffered else argv
        with self._lock:
            self._next += 1
            ident = self._next
            self.proc.stdin.write(json.dumps({"id": ident, "argv": argv, "env": env,
                                              "unbuffered": unbuffered,
                                              "cwd": os.path.abspath(cwd),
                                              "files": files}).encode() + b"\n")
            self.proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: ident in self._started or self._dead, 120):
                raise RuntimeError("the fork server did not answer")
            if self._dead:
                self._died()
            return self._started.pop(ident)

    def returncode(self, pid: int, timeout: float | None = 0) -> int | None:
        """The child's exit status once it has ended (waiting up to ``timeout``), else None."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits or self._dead, timeout)
            if self._dead and pid not in self._exits:
                self._died()
            return self._exits.get(pid)

    def _died(self):
        self._log.seek(0)
        tail = self._log.read()[-3000:].decode(errors="replace")
        raise RuntimeError(f"the fork server exited ({self.proc.wait()}):\n{tail}")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


_SERVERS: dict = {}
_SERVERS_LOCK = threading.Lock()


def _server(args: list, env: dict, fresh: bool) -> _Server | None:
    """The server for this command, or None where it must run as a new process."""
    options = args[2:] if args[1:2] == ["-u"] else args[1:]
    if fresh or len(options) < 2 or args[0] != sys.executable or options[0] not in ("-m", "-c"):
        return None
    key = _import_env(env)
    with _SERVERS_LOCK:
        if key not in _SERVERS:
            _SERVERS[key] = _Server(env)
        return _SERVERS[key]


class Forked:
    """The part of ``subprocess.Popen`` (text mode) that the tests use, for a forked child:
    pid, stdin/stdout/stderr pipes where asked for, poll, wait, communicate, signals."""

    def __init__(self, server: _Server, args: list, cwd: str, env: dict, stdin, stdout, stderr):
        self.args, self._server, self.returncode = args, server, None
        self._tmp = tempfile.TemporaryDirectory(prefix="forked-")
        files, self._pipes = [], []
        for fd, how in enumerate((stdin, stdout, stderr)):
            if how == subprocess.PIPE:
                path = os.path.join(self._tmp.name, f"fd{fd}")
                os.mkfifo(path)
                self._pipes.append((fd, path))
            elif how == subprocess.STDOUT and fd == 2:
                path = files[1]
            elif how == subprocess.DEVNULL:
                path = os.devnull
            elif how is None:         # inherited, as Popen does: whatever this process has
                path = f"/proc/{os.getpid()}/fd/{fd}"
            elif hasattr(how, "fileno"):  # a file by its name: the caller may close it now
                path = os.readlink(f"/proc/self/fd/{how.fileno()}")
                if not os.path.isfile(path):    # a pipe or socket, open for the child's life
                    path = f"/proc/{os.getpid()}/fd/{how.fileno()}"
            else:
                raise ValueError(f"unsupported stream {how!r}")
            files.append(path)
        self.pid = server.start(list(args[1:]), cwd, env, files)
        self.stdin = self.stdout = self.stderr = None
        self._readers, self._out = None, {}
        # the child opens 0, 1, 2 in that order; so do we, or both would block on a FIFO
        for fd, path in self._pipes:
            stream = open(path, "w" if fd == 0 else "r", errors="replace")
            setattr(self, ("stdin", "stdout", "stderr")[fd], stream)

    def poll(self):
        if self.returncode is None:
            self.returncode = self._server.returncode(self.pid)
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            self.returncode = self._server.returncode(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def communicate(self, input=None, timeout=None):
        """Writes ``input``, reads stdout and stderr to their ends, waits for the exit; called
        again after a timeout, it goes on reading where the first call left off."""
        if self._readers is None:
            def read(name):
                stream = getattr(self, name)
                self._out[name] = stream.read() if stream else None

            self._readers = [threading.Thread(target=read, args=(n,), daemon=True)
                             for n in ("stdout", "stderr")]
            for r in self._readers:
                r.start()
            if self.stdin:
                try:
                    self.stdin.write(input or "")
                    self.stdin.close()
                except BrokenPipeError:
                    pass
        self.wait(timeout)
        for r in self._readers:
            r.join()
        return self._out["stdout"], self._out["stderr"]

    def __del__(self):
        if not hasattr(self, "stdin"):
            return
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream:
                stream.close()
        self._tmp.cleanup()


def popen(args: list, *, cwd: str, env: dict | None = None, stdin=None, stdout=None,
          stderr=None, fresh: bool = False):
    """``subprocess.Popen(args, cwd=, env=, stdin=, stdout=, stderr=, text=True)``, forked
    from a server that has done the imports where the command allows it (module docstring)."""
    env = dict(os.environ if env is None else env)
    server = _server(args, env, fresh)
    if server is None:
        return subprocess.Popen(args, cwd=cwd, env=env, stdin=stdin, stdout=stdout,
                                stderr=stderr, text=True)
    return Forked(server, args, cwd, env, stdin, stdout, stderr)


def run(args: list, *, cwd: str, env: dict | None = None, timeout: float | None = None,
        input: str | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """``subprocess.run(args, cwd=, env=, timeout=, input=, capture_output=True, text=True)``,
    forked where the command allows it (module docstring)."""
    proc = popen(args, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, fresh=fresh)
    try:
        out, err = proc.communicate(input, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(args, timeout, out, err)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def close_all():
    """Stops every server of this process (at the end of a pytest session)."""
    with _SERVERS_LOCK:
        while _SERVERS:
            _SERVERS.popitem()[1].close()
