"""The policy checks of some stacks in a second process, while this one plans.

On a fleet the mandatory rules are a quarter of an incremental plan (a thousand models: about
two seconds over seven stacks), and a plan is otherwise one busy core. So, when the plan is
incremental and its cache is warm (it holds the base side), `modelctl plan` forks a worker
before it plans: the worker
computes the head side of its stacks with the very functions the plan uses (the head's run of
the changed models and the platform, the other models from the cache, assembled in the
canonical order: `incremental.head_runs`), checks them, and sends back each violation's
enforcement and text. The plan prints them in stack order with its own, so the output is the
same as checking every stack here (tests/test_incremental.py compares both).

Forked early (after validation, before any run), the worker shares only the imported modules
with the plan, so the two processes' memory adds up to little more than one plan's. Anything
the worker cannot do (it fails, dies, or sends something else) is checked here instead:
a result is used only when it is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import time
from collections.abc import Callable, Sequence

from scripts.modelctl import forked

# Stack -> [(enforcement, violation text)], in the order the rules reported them.
Verdicts = dict[str, list[tuple[str, str]]]
# The least the plan waits for its worker once its own work is done.
MIN_WAIT_SECONDS = 60.0
# Verdicts are a few lines per violation; more than this is not a worker's answer.
MAX_RESULT_BYTES = 64 * 1024 * 1024


class PolicyWorker:
    """A forked process computing `compute(stacks)`; `result()` waits for it."""

    def __init__(self, stacks: Sequence[str], compute: Callable[[Sequence[str]], Verdicts]):
        self.stacks = list(stacks)
        reader, writer = os.pipe()

        def work() -> None:  # in the forked process
            os.close(reader)
            _run_worker(writer, self.stacks, compute)

        self.child = forked.Forked(work)
        os.close(writer)
        self.reader = reader

    @property
    def pid(self) -> int | None:
        """The worker's process id while it has not been waited for or stopped."""
        return self.child.pid

    def result(self) -> Verdicts | None:
        """The verdicts of every stack given, or None when the worker did not deliver them.

        Waits at most twice as long as the plan took since the fork (at least a minute): the
        worker does less than the plan, so a worker still busy then is stuck, and is stopped.
        """
        if self.pid is None:
            return None
        deadline = time.monotonic() + max(MIN_WAIT_SECONDS, 2 * (time.monotonic() - self.child.started))
        chunks: list[bytes] = []
        received = 0
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.reader], [], [], max(remaining, 0))
            if not ready:
                self.close()
                return None
            chunk = os.read(self.reader, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
            if received > MAX_RESULT_BYTES:
                self.close()
                return None
        os.close(self.reader)
        succeeded = self.child.succeeded()
        data = b"".join(chunks)
        if not succeeded:
            return None
        try:
            document = json.loads(data)
            verdicts = {stack: [(str(level), str(text)) for level, text in document[stack]] for stack in self.stacks}
        except (ValueError, KeyError, TypeError):
            return None
        return verdicts

    def close(self) -> None:
        """Stop the worker if it is still running (the plan failed before asking for it)."""
        if self.pid is None:
            return
        self.child.stop()
        with contextlib.suppress(OSError):
            os.close(self.reader)


def _run_worker(writer: int, stacks: list[str], compute: Callable[[Sequence[str]], Verdicts]) -> None:
    """In the forked process (scripts/modelctl/forked.py runs it, and leaves with its exit code):
    compute, and write the JSON verdicts."""
    payload = json.dumps(compute(stacks)).encode()
    with os.fdopen(writer, "wb") as pipe:
        pipe.write(payload)
