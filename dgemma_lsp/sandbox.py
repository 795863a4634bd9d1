"""Run an untrusted Python program (model output + tests) with limits, for `dgemma-lsp eval`.

Each program runs in its own `python3 -I` process reading the program from stdin, with CPU-time,
address-space, file-size (which caps its output) and process-count limits, a wall-clock timeout, and —
where the kernel lets us — its own network, mount and PID namespaces:

* as root: no network, private tmpfs over /tmp, /var/tmp, /dev/shm and /run/lock (the world-writable
  directories), and the program runs as `nobody`, so it can write nowhere but its scratch directory and
  the process limit is enforced;
* otherwise, in an unprivileged user namespace: no network and private tmpfs (the process limit then
  counts all of the user's processes);
* if neither is allowed: limits only. `isolation()` says which one applies.
"""

from __future__ import annotations

import functools
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

NOBODY = 65534

# Runs inside the new namespaces as (namespace) root; "$1" is the Python prefix, "$2" the uid to become.
_SETUP = r"""
set -e
mount --make-rprivate /
for d in /tmp /var/tmp /dev/shm /run/lock; do
  [ -d "$d" ] && mount -t tmpfs -o size=64m,mode=1777 tmpfs "$d"
done
mkdir /tmp/python /tmp/work
mount --bind "$1" /tmp/python
mount -o remount,bind,ro /tmp/python
cd /tmp/work
export HOME=/tmp/work
if [ -n "$2" ]; then
  chown "$2:$2" /tmp/work
  exec setpriv --reuid="$2" --regid="$2" --clear-groups --inh-caps=-all /tmp/python/bin/python3 -I -
fi
exec /tmp/python/bin/python3 -I -
"""


@dataclass(frozen=True)
class Limits:
    wall_s: float = 15.0
    cpu_s: int = 10
    memory_mb: int = 1024
    processes: int = 64
    output_bytes: int = 1_000_000  # also the largest file the program may write


DEFAULT_LIMITS = Limits()


@dataclass
class Outcome:
    status: Literal["passed", "failed", "timeout"]
    returncode: int | None
    output: str  # stdout and stderr together, at most Limits.output_bytes
    seconds: float


def _namespace_command(prefix: str, as_root: bool) -> list[str]:
    user = [] if as_root else ["--map-root-user"]
    uid = str(NOBODY) if as_root else ""
    return ["unshare", *user, "--net", "--mount", "--pid", "--fork", "--kill-child", "--", "sh", "-c", _SETUP,
            "sandbox", prefix, uid]  # fmt: skip


@functools.cache
def isolation() -> Literal["namespaces", "user-namespace", "limits-only"]:
    """Which isolation this machine allows, probed once by running a trivial program."""
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        return "limits-only"
    as_root = os.geteuid() == 0
    probe = subprocess.run(
        _namespace_command(sys.base_prefix, as_root),
        input=b"import socket\nsocket.socket().connect(('127.0.0.1', 9))\n",
        capture_output=True,
        timeout=30,
    )
    # A connection attempt in an empty network namespace fails with "Network is unreachable"
    # (no loopback configured), so seeing that error proves the namespace is in place.
    if b"unreachable" not in probe.stderr.lower():
        return "limits-only"
    return "namespaces" if as_root else "user-namespace"


def _set_limits(limits: Limits) -> None:
    mb = 1024 * 1024
    # SIGXCPU at the soft limit (the driver ends with OUT_OF_CPU), SIGKILL a second later
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# Runs the program as HumanEval's harness does: `exit` and `quit` are gone and any exception, SystemExit
# included, fails it. Only a program that ran to its end writes the run's random token last: a program
# that ends the process early (`os._exit(0)`) exits with status 0 too, but without it.
_OUT_OF_CPU = 124  # the driver's exit status when its CPU time runs out: a timeout, not a failure
_DRIVER = """\
import builtins, os, signal, sys, traceback
builtins.exit = builtins.quit = None
signal.signal(signal.SIGXCPU, lambda *_: os._exit({out_of_cpu}))
try:
    exec(compile({program!r}, "<program>", "exec"), {{}})  # as the harness: `__name__` is not "__main__"
except BaseException:
    sys.stdout.flush()
    traceback.print_exc()
    sys.exit(1)
sys.stdout.flush()
sys.stderr.flush()
os.write(1, {token!r})
"""


def run_python(program: str, limits: Limits = DEFAULT_LIMITS) -> Outcome:
    """Run `program` to completion or until a limit stops it; `passed` means it ran to its end without an
    exception (exiting early, with any status, fails)."""
    token = f"\n{secrets.token_hex(16)}\n".encode()
    mode = isolation()
    if mode == "limits-only":
        command = [os.path.join(sys.base_prefix, "bin", "python3"), "-I", "-"]
    else:
        command = _namespace_command(sys.base_prefix, mode == "namespaces")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dgemma-eval-") as scratch, tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=output,  # a file, so RLIMIT_FSIZE caps huge output instead of our memory
            stderr=subprocess.STDOUT,
            cwd=scratch,  # only used without namespaces; inside them the program gets its own tmpfs
            env={"PATH": "/usr/bin:/bin", "HOME": scratch, "LANG": "C.UTF-8"},
            start_new_session=True,
            preexec_fn=lambda: _set_limits(limits),
        )
        try:
            driver = _DRIVER.format(program=program, token=token, out_of_cpu=_OUT_OF_CPU)
            process.communicate(driver.encode(), timeout=limits.wall_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # whatever it left behind in its session
            except ProcessLookupError:
                pass
            process.wait()
        output.seek(0)
        raw = output.read(limits.output_bytes + len(token))
    seconds = time.perf_counter() - start
    finished = raw.endswith(token)
    text = raw.removesuffix(token)[: limits.output_bytes].decode("utf-8", "replace")
    if timed_out or (process.returncode == _OUT_OF_CPU and not finished):
        return Outcome("timeout", process.returncode, text, seconds)
    passed = process.returncode == 0 and finished
    return Outcome("passed" if passed else "failed", process.returncode, text, seconds)
