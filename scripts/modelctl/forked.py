"""A task run in a forked copy of this process: the policy worker's (scripts/modelctl/policy_worker.py,
which reads its answer from a pipe) and the cold plan-cache fill's, whose result lands in the plan
cache.

The cold plan-cache job (main's first plan under a program: every model of every stack is
declared once) is one busy core for minutes at a thousand models. Its stacks are independent:
`incremental.head_runs` forks one of these, and the two processes take the stacks one at a time
(`Claims`: the parent from the first, the child from the last, so a large stack does not leave
one of them idle); the child keeps its stacks' pieces in the plan cache, and the parent reads
them back from there as a warm plan reads them. The cache is the only channel: its entries are
written whole (a temporary file renamed into place, scripts/modelctl/plancache.py), and what the
child failed to keep the parent declares itself, so a child that fails, dies or hangs costs
time, never a wrong plan.

Forked only where it is safe: a POSIX fork, and no other thread in this process (a thread's
locks would be copied held).
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable

# The least the parent waits for its child once its own share is done.
MIN_WAIT_SECONDS = 60.0


def available() -> bool:
    return hasattr(os, "fork") and threading.active_count() == 1


class Claims:
    """Work items shared by a process and its forked child: `take(i)` is true in exactly one of
    them (a file created with O_EXCL in a private directory made before the fork)."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="modelctl-claims-")

    def take(self, item: int) -> bool:
        try:
            os.close(os.open(os.path.join(self.directory, str(item)), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
        return True

    def __enter__(self) -> Claims:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class Forked:
    """`task()` in a forked process; `succeeded()` waits for it and says whether it returned."""

    def __init__(self, task: Callable[[], None]):
        # Whatever this process buffered would otherwise be written twice.
        sys.stdout.flush()
        sys.stderr.flush()
        self.started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _run_child(task)
        self.pid: int | None = pid

    def succeeded(self) -> bool:
        """Wait for the child: at least a minute, and at most twice as long as the parent has
        worked since the fork (the two do the same work, so a child still busy then is stuck)."""
        if self.pid is None:
            return False
        deadline = time.monotonic() + max(MIN_WAIT_SECONDS, 2 * (time.monotonic() - self.started))
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid != 0:
                self.pid = None
                return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            if time.monotonic() > deadline:
                self.stop()
                return False
            time.sleep(0.02)

    def stop(self) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(self.pid, 0)
        self.pid = None


def _run_child(task: Callable[[], None]) -> None:
    """In the forked process: run the task and leave without the parent's exit handlers or
    buffers (os._exit)."""
    code = 1
    try:
        # What was inherited is never collected here: scanning it would copy every shared page.
        gc.freeze()
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the process ends below
        task()
        code = 0
    except BaseException:  # the parent declares what the child did not keep
        code = 1
    finally:
        os._exit(code)
