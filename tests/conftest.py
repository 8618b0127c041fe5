"""Shared fixtures.

``s3_server`` runs a real S3-compatible server (moto in server mode, a separate process) on
loopback for the whole session and points every AWS client at it through ``os.environ``, so
code under test, and Ray workers started later (they inherit the environment), reach it over
real HTTP. No in-process mocking.
"""

from __future__ import annotations

import os

# Never reach a model hub from the tests (set before anything imports huggingface_hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see backdrop/__init__.py
# Ray Train's controller polls its workers every 2 s by default, so each start, finish and
# failure of a test's few-step run waited for the next poll; every Ray process the tests start
# inherits a 0.5 s interval (Ray's own setting, nothing replaced).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402
from loopback import answers_http, free_port  # noqa: E402

S3_STARTUP_TIMEOUT_S = 60.0
SESSION_MARK = "BACKDROP_TEST_SESSION"  # every process this run starts inherits it
LEFTOVER_GRACE_S = 60.0  # how long stopped servers and Ray processes may take to exit (a hang guard)
REPO = Path(__file__).resolve().parents[1]


# --- the session: a private BACKDROP_HOME, nothing left behind ------------------------------
@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory):
    """The whole run uses a temporary ``BACKDROP_HOME`` (MLflow store, model cache) and no
    inherited ``MLFLOW_TRACKING_URI``: the user's own store (``~/.backdrop``) is never read or
    written. Tests never write under ``runs/`` in the checkout either: checked at the end."""
    home = tmp_path_factory.mktemp("session-backdrop-home")
    runs_before = _tree(REPO / "runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKDROP_HOME", str(home))
        # Tests write a catalog beside their test's files but share input images across a module:
        # every batch job of the run may read under the run's temporary root (and only there;
        # the input-scope tests unset this to see a job's own default).
        mp.setenv("BACKDROP_ALLOW_INPUTS", str(tmp_path_factory.getbasetemp()))
        # The test hooks (backdrop.testhooks: holds a test releases) exist only with this set;
        # every process the run starts inherits it. Production never sets it.
        mp.setenv("BACKDROP_TEST_HOOKS", "1")
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "BACKDROP_MLFLOW_ARTIFACT_ROOT"):
            mp.delenv(name, raising=False)
        yield home
        assert os.environ["BACKDROP_HOME"] == str(home), "a test left BACKDROP_HOME changed"
    assert _tree(REPO / "runs") == runs_before, f"the tests wrote under {REPO / 'runs'}"


def _tree(root: Path) -> dict[str, int] | None:
    """Every file under ``root`` with its modification time (None: no such directory)."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture(scope="session", autouse=True)
def no_processes_left_behind():
    """Fails the run if any process it started (Ray heads and workers, Serve, moto, mlflow,
    Chromium) is still alive at the end, after a grace period for those being stopped.

    Every process the run starts inherits ``BACKDROP_TEST_SESSION``, so even one that lost its
    parent (reparented to init) is found by its environment; the run's own descendants are
    found through the process tree. What remains is killed, then reported.
    """
    import psutil

    mark = uuid.uuid4().hex
    os.environ[SESSION_MARK] = mark
    yield
    leftovers = _session_processes(mark)
    if leftovers:
        _, leftovers = psutil.wait_procs(leftovers, timeout=LEFTOVER_GRACE_S)
    described = []
    for proc in leftovers:
        try:
            described.append(f"{proc.pid} {proc.name()}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except psutil.Error:
            pass
    os.environ.pop(SESSION_MARK, None)
    if described:
        pytest.fail("processes left behind by the test run (now killed):\n" + "\n".join(described), pytrace=False)


def _session_processes(mark: str) -> list:
    import psutil

    me = os.getpid()
    found = {}
    candidates = list(psutil.Process(me).children(recursive=True))
    for proc in psutil.process_iter():
        try:
            if proc.pid != me and proc.environ().get(SESSION_MARK) == mark:
                candidates.append(proc)
        except psutil.Error:  # another user's process, or gone
            pass
    for proc in candidates:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc
        except psutil.Error:
            pass
    return list(found.values())


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).parent / "moto_server"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return base + ["-H", "127.0.0.1", "-p", str(port)]


def _start_server(name: str, command: Callable[[int], list[str]], health: str, log_path: Path,
                  timeout: float, stop: Callable[[subprocess.Popen], None], **popen) -> tuple[subprocess.Popen, str]:
    """Start a server on a free loopback port and wait until ``health`` answers; retried if the
    free port was taken in between. Returns the process and its base URL."""
    last_error = ""
    for _ in range(3):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, **popen)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if answers_http(url + health):
                return proc, url
            time.sleep(0.2)
        last_error = (f"{name} exited with status {proc.returncode}" if proc.poll() is not None
                      else f"{name} did not answer within {timeout:.0f} s")
        stop(proc)
    raise RuntimeError(f"cannot start {name}: {last_error}\n{log_path.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The endpoint URL of a moto S3 server running on loopback for the session.

    While it runs, os.environ holds test credentials, the region and the endpoint
    (``BACKDROP_S3_ENDPOINT_URL``, ``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``); the previous
    values come back at teardown.
    """
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    proc, endpoint = _start_server("moto_server", _moto_command, "/", log_path, S3_STARTUP_TIMEOUT_S, _stop)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("BACKDROP_S3_ENDPOINT_URL", endpoint)
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            mp.setenv("AWS_ENDPOINT_URL_S3", endpoint)
            # Nothing else may redirect or re-authenticate the clients.
            for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
                mp.delenv(name, raising=False)
            for name in ("NO_PROXY", "no_proxy"):  # loopback never goes through a proxy
                current = os.environ.get(name, "")
                mp.setenv(name, ",".join(p for p in (current, "127.0.0.1", "localhost") if p))
            yield endpoint
    finally:
        _stop(proc)


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty, uniquely named bucket on the test server, as ``s3://<bucket>``."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket = f"backdrop-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    yield f"s3://{bucket}"
    try:  # keep the server's memory small over a long session
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=bucket)
    except Exception:
        pass


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained tiny-preset generator whose CG/PG outputs are made non-zero.

    ControlNets start with zero convolutions (no effect at all); nudging every weight makes
    both generators act, so tests can see their contributions and where they land.
    """
    import torch

    from backdrop.models.generator import BackdropModel

    torch.manual_seed(0)
    model = BackdropModel.tiny(["mug", "lamp", "watch"])
    with torch.no_grad():
        for net in (model.cg, model.pg):
            for p in net.parameters():
                p.add_(0.02 * torch.randn_like(p))
    return model


MLFLOW_STARTUP_TIMEOUT_S = 120.0


@pytest.fixture
def mlflow_server(s3_server, s3_bucket, tmp_path):
    """A real ``mlflow server`` process on loopback: SQLite backend store, artifacts proxied
    by the server (``mlflow-artifacts:`` URIs) into ``<s3_bucket>/mlartifacts`` on the S3 test
    server. Yields the tracking URI (``http://127.0.0.1:<port>``) and changes nothing in this
    process: tests point their clients at it themselves (``MLFLOW_TRACKING_URI``).
    """
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    base = [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]
    env = dict(
        os.environ,
        MLFLOW_S3_ENDPOINT_URL=s3_server,  # the server writes to S3; clients go through its proxy
        # no background job runner (seven extra processes) and no telemetry: a lean test server
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp_path / "mlflow_server.log"
    proc, uri = _start_server(
        "mlflow server",
        lambda port: base + ["server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow-server.db'}",
                             "--artifacts-destination", f"{s3_bucket}/mlartifacts"],
        "/health", log_path, MLFLOW_STARTUP_TIMEOUT_S, _stop_group, env=env, start_new_session=True)
    try:
        yield uri
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session, with the workers it forked."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:  # workers that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def small_catalog(tmp_path_factory, num_categories: int, train_per_category: int,
                  heldout_per_category: int = 1) -> dict[str, str]:
    """A small synthetic catalog (split -> Parquet URI) in a fresh temporary directory."""
    from backdrop.demo.synthetic import SyntheticConfig, make_catalog

    return make_catalog(str(tmp_path_factory.mktemp("catalog")), SyntheticConfig(
        num_categories=num_categories, train_per_category=train_per_category,
        heldout_per_category=heldout_per_category, pairs_per_category=1))


def save_tiny_generator(tmp_path_factory, categories: list[str]) -> str:
    """A fresh (untrained, seeded) tiny generator over ``categories``, saved to a temp directory."""
    import torch

    from backdrop.models.generator import BackdropModel

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("model") / "tiny")
    BackdropModel.tiny(categories).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shared_ray_head():
    """One real `ray start --head` for every `ray job submit` test of the run (each job brings
    its own store through its runtime env, so the jobs do not see each other's state)."""
    from ray_head import ray_head

    with ray_head() as head:
        yield head


# --- one Ray + Serve for the HTTP and browser modules ---------------------------------------
# Starting and stopping a local Ray with Serve costs about 15 s; these modules share one (each
# deploys its own applications and deletes them when it ends) and so run last, together, after
# every test that starts a Ray of its own.
SERVE_MODULES = ("test_serve_fuzz.py", "test_page.py", "test_serve.py")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: SERVE_MODULES.index(item.path.name) + 1 if item.path.name in SERVE_MODULES else 0)


# --- two workers: every Ray on one, everything else on the other -----------------------------
# `make test` runs two pytest-xdist workers (`-n 2`). About a third of the Ray modules' wall time
# is spent waiting (servers starting, jobs polled) with the 2 cores idle, so the Ray-free modules
# run beside them on the second worker. Each worker keeps the order above, and the in-process
# Rays run one at a time, as before. (A scheduler and not `--dist loadgroup`: xdist 3.8 groups by
# rewriting each item's node id, which pytest 9 no longer reads.) A Ray-free module that starts
# Ray after all is caught by ``ray_stays_in_its_group`` below.
#
# The modules in OWN_CLUSTER_MODULES start clusters of their own (two raylets, a `ray start`
# head), on their own ports and temporary directories, and find their processes through their
# own cluster, so they may run beside the in-process Ray. They are a third work unit, which
# xdist gives to the first worker with nothing left to do: the Ray-free one, done long before the
# Ray one (measured 320 s of work against 544 s, most of the Ray-free worker's last 4 minutes idle).
OWN_CLUSTER_MODULES = {"test_distributed.py"}
RAY_MODULES = {"test_batch.py", "test_batch_safety.py", "test_brands.py", "test_model_family.py",
               "test_placements_batch.py", *SERVE_MODULES, *OWN_CLUSTER_MODULES}


@pytest.hookimpl(optionalhook=True)  # `-p no:xdist` (one process) still runs the suite
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class RayApart(LoadScopeScheduling):
        """Work units "no-ray", "ray" and "own-cluster", each run by one worker in collection
        order. xdist queues units by size (the first two start at once, one per worker), so the
        small "own-cluster" unit waits for the first worker to finish."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            if module in OWN_CLUSTER_MODULES:
                return "own-cluster"
            return "ray" if module in RAY_MODULES else "no-ray"

    return RayApart(config, log)


@pytest.fixture(autouse=True)
def ray_stays_in_its_group(request, monkeypatch):
    """A test outside ``RAY_MODULES`` that starts Ray in this process fails, with where to move it."""
    if request.node.path.name in RAY_MODULES:
        yield
        return
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts Ray: add its module to RAY_MODULES (tests/conftest.py) "
                             "so it runs on the Ray worker")

    monkeypatch.setattr(ray, "init", refuse)
    yield


@pytest.fixture(scope="session")
def serve_cluster(tmp_path_factory, s3_server):  # S3 first: the replicas inherit its endpoint and credentials
    """A local Ray (2 CPUs) with Serve on a free loopback port, and the ``BACKDROP_HOME`` its
    replicas and this process share (registered versions, brand kits): ``{"url", "home"}``.

    The replicas inherit the environment of the moment Ray starts: the S3 endpoint, a second API
    key in ``BACKDROP_API_KEYS`` (an env var, never a runtime_env) and at most two models per
    replica. The registry is the one under ``BACKDROP_HOME``, nothing else.
    """
    from serve_stack import OTHER_KEY, local_serve

    home = tmp_path_factory.mktemp("serve-home")
    env = {"BACKDROP_HOME": str(home), "BACKDROP_MAX_MODELS_PER_REPLICA": "2", "BACKDROP_S3_ENDPOINT_URL": s3_server}
    with pytest.MonkeyPatch.context() as mp:  # local_serve sets (and restores) env itself
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("BACKDROP_API_KEYS", OTHER_KEY)
        with local_serve(env) as url:
            yield {"url": url, "home": home}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private BACKDROP_HOME (MLflow store, model cache) for one test."""
    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"
