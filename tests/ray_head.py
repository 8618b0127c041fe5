"""A real `ray start --head` on loopback and the real `ray job submit` CLI, for job tests.

Ray 2.60 heads started by `ray start` turn token authentication on, and the CLI sends
``~/.ray/auth_token`` only with ``RAY_AUTH_MODE=token``. The head's PATH decides which
``python`` runs a job's entrypoint: this venv's, as when it is activated.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loopback import answers_http, free_port

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"


def end_process_tree(proc: subprocess.Popen, sig: int, grace_s: float = 5) -> None:
    """Signal a process a test started, then end whatever of its descendants outlives it
    (Ray's workers die with their driver or head; its agents may linger for a while)."""
    import psutil

    family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


@dataclass
class RayHead:
    address: str  # the dashboard's HTTP address, what `ray job submit --address` takes
    env: dict

    def submit(self, entrypoint: list[str], env_vars: dict | None = None, timeout: float = 420,
               excludes: tuple[str, ...] = (".git", "runs", "checkpoints")) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir <repo>` as the README writes it; waits for the job."""
        runtime_env = {"env_vars": {"PYTHONPATH": "platform", **(env_vars or {})}, "excludes": list(excludes)}
        return subprocess.run(
            [str(RAY), "job", "submit", "--address", self.address, "--working-dir", str(REPO),
             "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint],
            capture_output=True, text=True, timeout=timeout, cwd=REPO, env=self.env)


@contextmanager
def ray_head(num_cpus: int = 2):
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI into this process, so an earlier
    # test's store would leak into the head and every job it runs: a job gets its store from
    # its own runtime env (BACKDROP_HOME or MLFLOW_TRACKING_URI in ``submit``'s env_vars).
    inherited = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env = {**inherited, "RAY_AUTH_MODE": "token", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    port, dashboard = free_port(), free_port()
    temp_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"rayt{port}"  # short: Ray's socket paths
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={free_port()}",
         f"--ray-client-server-port={free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        _wait_for_dashboard(address, head)
        yield RayHead(address, env)
    finally:
        end_process_tree(head, signal.SIGTERM, grace_s=15)  # `ray start --block` stops what it started
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(address: str, head: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not answers_http(f"{address}/api/version"):  # 401 without Ray's auth token: it is up
        assert head.poll() is None, "ray start exited"
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Ray dashboard at {address} after {timeout} s")
        time.sleep(0.5)
