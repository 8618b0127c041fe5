"""Ray Train for real: two raylets on loopback, DDP across them, a killed worker, resume."""

import os
import signal
import threading
import time

import pytest

from backdrop.demo.synthetic import SyntheticConfig, make_catalog
from backdrop.models.generator import BackdropModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist-catalog")
    return make_catalog(str(out), SyntheticConfig(num_categories=2, train_per_category=24,
                                                  heldout_per_category=2, pairs_per_category=1))


@pytest.fixture(scope="module")
def init_model(tmp_path_factory, catalog):
    path = str(tmp_path_factory.mktemp("init") / "gen")
    BackdropModel.tiny(["mug", "laptop"]).save_pretrained(path)
    return path


@pytest.fixture
def two_node_cluster(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("BACKDROP_HOME", str(tmp_path / "home"))  # workers inherit it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})  # logical CPUs: Ray Data needs
    cluster.add_node(num_cpus=2)  # one whole CPU free per node for its file-listing task

    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _registered_checkpoints(run_dir: str) -> int:
    """Checkpoints Ray Train's controller has registered (its checkpoint manager's snapshot)."""
    import json

    try:
        with open(os.path.join(run_dir, "checkpoint_manager_snapshot.json")) as f:
            return len(json.load(f).get("checkpoint_results") or [])
    except (FileNotFoundError, ValueError):  # not written yet, or being written
        return 0


def _train_workers(cluster) -> dict[int, int]:
    """PID of each live Ray Train worker process of ``cluster`` -> PID of the raylet that started it.

    Found by process title (Ray names worker processes ``ray::<ActorClass>``), so the test
    does not depend on the dashboard's state API; only workers under this cluster's own raylets
    count (the in-process Ray of another test may run beside it, tests/conftest.py).
    """
    import psutil
    from ray._private import ray_constants

    raylets = {info.process.pid for node in cluster.list_all_nodes()
               for info in node.all_processes[ray_constants.PROCESS_TYPE_RAYLET]}
    workers = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::RayTrainWorker"):
            parent = proc.parent()
            while parent is not None and parent.pid not in raylets:
                parent = parent.parent()
            if parent is not None:
                workers[proc.pid] = parent.pid
    return workers


def test_two_nodes_survive_a_killed_worker(two_node_cluster, catalog, init_model, tmp_path):
    import mlflow

    from backdrop import registry, runtime
    from backdrop.training.distributed import DistributedTrainConfig, train_distributed

    storage_path = str(tmp_path / "ckpt")
    hold = tmp_path / "hold"
    hold.touch()  # the workers wait after their step-4 checkpoint until the test has killed one
    cfg = DistributedTrainConfig(
        catalog=catalog["train"], storage_path=storage_path, name="two-node", stages=("cg",),
        steps={"cg": 7}, init=init_model, batch_size=4, num_workers=2, cpus_per_worker=1,
        placement_strategy="STRICT_SPREAD", max_failures=2, checkpoint_every=4, log_every=4,
        log_images_every=0, registered_model_name="backdrop-two-node",
        hold_file=str(hold), hold_after_step=4,
    )
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = train_distributed(cfg)
        except Exception as e:  # surfaced by the assertion below
            outcome["error"] = e

    runner = threading.Thread(target=run, daemon=True)
    runner.start()

    deadline = time.monotonic() + 300  # a hang guard
    # wait until Ray Train's controller has registered a checkpoint (its snapshot lists it): a
    # checkpoint directory alone may not be registered yet, and a group killed before that
    # would restart from nothing
    while _registered_checkpoints(os.path.join(storage_path, "two-node")) < 1:
        assert runner.is_alive() and time.monotonic() < deadline, f"no checkpoint registered: {outcome}"
        time.sleep(0.1)
    workers = _train_workers(two_node_cluster)
    assert len(workers) == 2 and len(set(workers.values())) == 2  # one worker under each raylet
    os.kill(next(iter(workers)), signal.SIGKILL)
    hold.unlink()  # the restarted group resumes from the step-4 checkpoint and runs freely
    runner.join(timeout=600)

    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.state["resumes"] >= 1  # restarted from a checkpoint, not from scratch
    assert result.state["stage_index"] == 1  # ... and finished the stage
    assert result.registered_version == "1"
    registry.configure()
    run = mlflow.get_run(result.run_id)
    assert "cg/loss" in run.data.metrics and run.data.tags["preset"] == "tiny"
    loaded = runtime.load("models:/backdrop-two-node/1").model
    assert loaded.categories.ids == {"mug": 0, "laptop": 1}


def test_ray_job_submit_trains_registers_and_logs(catalog, init_model, tmp_path, monkeypatch, shared_ray_head):
    """The README's training command through the real `ray job submit` CLI to a real `ray start --head`."""
    import json

    import mlflow
    from mlflow.tracking import MlflowClient
    from backdrop import registry, runtime

    home = tmp_path / "home"
    job = shared_ray_head.submit(
        ["python", "jobs/train.py", "--catalog", catalog["train"], "--storage-path", str(tmp_path / "ckpt"),
         "--run-name", "submitted", "--init", init_model, "--stages", "cg,pg", "--steps", "cg=2,pg=2",
         "--batch-size", "4", "--num-workers", "2", "--cpus-per-worker", "0.5", "--checkpoint-every", "2",
         "--log-images-every", "2", "--register", "backdrop-submitted"],
        env_vars={"BACKDROP_HOME": str(home)})
    assert job.returncode == 0, f"ray job submit failed:\n{job.stdout[-6000:]}\n{job.stderr[-3000:]}"
    assert "succeeded" in job.stdout.lower()
    summary = json.loads(job.stdout[job.stdout.index('{\n  "checkpoint"'):job.stdout.index("\n}") + 2])
    assert summary["registered_version"] == "1"

    monkeypatch.setenv("BACKDROP_HOME", str(home))  # read the store the job wrote
    registry.configure()
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert {"cg/loss", "cg/lr", "cg/samples_per_s", "pg/loss"} <= set(run.data.metrics)
    assert run.data.tags["preset"] == "tiny" and run.data.tags["data_fingerprint"]
    grids = [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "samples")]
    assert any("cg_step000002" in p for p in grids) and any("pg_step000002" in p for p in grids)
    assert runtime.load("models:/backdrop-submitted/1").model.categories.ids == {"mug": 0, "laptop": 1}
