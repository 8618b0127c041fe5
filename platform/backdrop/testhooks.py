"""Fault injection for tests, in one place: holds a test releases, so that "a request is
queued" or "a worker dies after step 10" never depends on the machine's speed.

Nothing here can be switched on by production config alone: every hook refuses to exist
unless the process's environment says ``BACKDROP_TEST_HOOKS=1`` (the test stacks set it), so a
stray ``hold_dir`` in a deployed config fails the replica's start instead of stalling requests.

* :class:`TestHold`: the Serve generator's hold (``AppArgs.hold_dir``).
* :func:`training_hold`: the Ray Train workers' hold (``DistributedTrainConfig.hold_file``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

ENV = "BACKDROP_TEST_HOOKS"


def require_enabled(what: str) -> None:
    if os.environ.get(ENV) != "1":
        raise RuntimeError(f"{what} is a test hook: it needs {ENV}=1 in the environment (never set in production)")


class TestHold:
    """Lets a test decide when a batch runs, instead of hoping the machine is slow or fast.

    While ``<dir>/hold`` exists, each request that reaches the generator writes
    ``<dir>/arrived-<n>.json`` (its seeds, steps and model id), and a batch waits before its
    denoising loop: it writes ``<dir>/entered-<n>.json`` (its jobs' seeds and steps) when it
    starts waiting and ``<dir>/done-<n>.json`` (per job: ``ok`` or the exception) when done.
    """

    __test__ = False  # not a pytest class

    def __init__(self, directory: str) -> None:
        require_enabled("hold_dir")
        self.dir = Path(directory)
        self.count = 0

    def _write(self, name: str, record: dict) -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.rename(self.dir / name)  # atomic: a reader never sees half a marker

    def arrived(self, job, model_id: str) -> None:
        if (self.dir / "hold").exists():
            self.count += 1
            self._write(f"arrived-{os.getpid()}-{self.count}.json", {
                "seeds": job.params.seeds, "steps": job.params.steps, "model_id": model_id})

    async def wait(self, jobs: list) -> str | None:
        if not (self.dir / "hold").exists():
            return None
        self.count += 1
        marker = f"{os.getpid()}-{self.count}.json"
        self._write(f"entered-{marker}", {"seeds": [j.params.seeds for j in jobs],
                                          "steps": [j.params.steps for j in jobs]})
        while (self.dir / "hold").exists():
            await asyncio.sleep(0.02)
        return marker

    def done(self, marker: str, results: list) -> None:
        self._write(f"done-{marker}", {"results": [
            "ok" if hasattr(r, "images") else getattr(r, "line", None) or f"{type(r).__name__}: {r}"
            for r in results]})


def training_hold(path: str, poll_s: float = 0.05) -> None:
    """Wait while a test's hold file exists (``DistributedTrainConfig.hold_file``)."""
    require_enabled("hold_file")
    while os.path.exists(path):
        time.sleep(poll_s)
