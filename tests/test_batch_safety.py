"""Issue #13: a backfill never loses, misplaces or misses a row.

Hostile ids, ids that differ only in case, duplicates and nulls, inputs that are devices, FIFOs,
directories or huge, inputs edited between runs, a failed retry, and two runs into one output.
Most tests use the in-process executor (``executor="local"``, the same stages as on Ray) with
an untrained tiny model, 1 DDIM step at 64 px; the chaos test runs the real Ray job.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import save_tiny_generator
from oddities import MALFORMED_URIS, oddity_rows
from ray_head import REPO, end_process_tree
from backdrop.batch.lease import current_holder

CATEGORIES = ["mug", "laptop"]
HOSTILE_IDS = ["../../../etc/cron.d/x", "/tmp/evil-backdrop-test", "SKU.tmp-2024", "Sku-A", "SKU-A",
               "p" * 300, "a/b\\c", "..", "日本語の商品"]


# --------------------------------------------------------------------------- keys (no I/O)


def _under(root: str, uri: str) -> bool:
    return os.path.commonpath([os.path.realpath(root), os.path.normpath(uri)]) == os.path.realpath(root)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=20, unique=True), st.text(max_size=40))
def test_output_keys_stay_under_the_root_are_unique_and_stable(ids, category):
    from backdrop.batch import keys

    root = "/srv/out"
    uris = [keys.output_uri(root, category, pid, "png") for pid in ids]
    for pid, uri in zip(ids, uris):
        assert _under(root, uri) and uri.startswith(f"{root}/images/")
        name = uri.rsplit("/", 1)[-1]
        assert ".tmp-" not in name and not name.startswith(".") and len(name.encode()) <= 160
        assert keys.output_uri(root, category, pid, "png") == uri  # stable
    # unique, also where case does not count (macOS, Windows, some object-store mounts)
    assert len({u.lower() for u in uris}) == len(ids)
    # ids that differ only in case
    for pid in ids:
        if pid.swapcase() != pid:
            assert keys.segment(pid.swapcase()).lower() != keys.segment(pid).lower()


def test_output_key_rule_is_fixed():
    """The rule is part of the output's format: a change would orphan every existing image."""
    from backdrop.batch import keys

    assert keys.output_key("mug", "heldout-mug-00001", "png") == "images/mug/heldout-mug-00001.png"
    assert keys.segment("SKU-A") == "sku-a~0f57faf93bc9b1556e22"
    assert keys.segment("../../../etc/cron.d/x") == "etc_cron_d_x~592bf96cc0dfe9bb3ca1"
    assert keys.segment("..") == "_~5ec1f7e700f37c3d0b29"
    assert keys.segment("/tmp/evil") == "tmp_evil~d776b38ec09a056291aa"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny_generator(tmp_path_factory, CATEGORIES)


@pytest.fixture(scope="module")
def good_rows(tmp_path_factory) -> list[dict]:
    from backdrop.catalog import read_catalog
    from backdrop.demo.synthetic import SyntheticConfig, make_catalog

    root = tmp_path_factory.mktemp("catalog")
    paths = make_catalog(str(root), SyntheticConfig(num_categories=2, train_per_category=0,
                                                    heldout_per_category=3, pairs_per_category=0))
    rows = read_catalog(paths["heldout"]).to_pylist()
    assert {r["category"] for r in rows} == set(CATEGORIES)
    return rows


def _catalog(rows: list[dict], path) -> str:
    from backdrop.catalog import GENERATION_COLUMNS

    pq.write_table(pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in GENERATION_COLUMNS}),
                   str(path))
    return str(path)


def _config(catalog: str, model: str, output: str, **kw):
    from backdrop.batch.config import BackfillConfig

    return BackfillConfig(catalog=catalog, model=model, output=output,
                          **{"steps": 1, "batch_size": 4, "executor": "local", "max_failure_rate": 1.0, **kw})


def _manifest(output: str) -> dict[str, dict]:
    from backdrop.batch import manifest

    records = manifest.read_records(output).to_pylist()
    by_id = {r["product_id"]: r for r in manifest.latest(manifest.read_records(output)).to_pylist()}
    assert len(by_id) == len({r["product_id"] for r in records})
    return by_id


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _assert_accounted(result, rows_in: int) -> None:
    """rows in = ok + failed, in the result, its summary and its metrics."""
    assert result.plan.total == rows_in == result.ok + result.failed
    assert result.metrics()["rows_ok"] + result.metrics()["rows_failed"] == rows_in
    assert f"{rows_in} rows in scope = {result.ok} ok + {result.failed} failed" in result.summary()
    assert result.missing == 0


# --------------------------------------------------------------------------- 1, 2, 6: ids


def test_hostile_duplicate_and_missing_ids(home, model_dir, good_rows, tmp_path):
    from backdrop.batch import manifest
    from backdrop.batch.run import run_backfill

    mug, laptop = good_rows[0], good_rows[3]
    hostile = [{**(mug if i % 2 else laptop), "product_id": pid} for i, pid in enumerate(HOSTILE_IDS)]
    first_dup = {**mug, "product_id": "dup-1"}
    later_dup = {**laptop, "product_id": "dup-1"}  # other inputs: must not replace the first
    rows = (good_rows + hostile + [first_dup, {**mug, "product_id": None}, later_dup,
                                   {**laptop, "product_id": "  "}, {**mug, "product_id": "dup-1"}])
    catalog = _catalog(rows, tmp_path / "catalog.parquet")
    root = tmp_path / "zone"
    output = root / "out"
    config = _config(catalog, model_dir, str(output))

    result = run_backfill(config)
    _assert_accounted(result, len(rows))
    assert (result.ok, result.failed, result.plan.refused) == (len(good_rows) + len(HOSTILE_IDS) + 1, 4, 4)
    assert "duplicate_product_id 2" in result.summary() and "missing_product_id 2" in result.summary()
    records = _manifest(str(output))
    assert set(records) == {r["product_id"] for r in good_rows} | set(HOSTILE_IDS) | {"dup-1"}
    assert {r["status"] for r in records.values()} == {"ok"}
    from backdrop.batch import fingerprint

    assert records["dup-1"]["category"] == "mug"  # the first occurrence made it
    assert records["dup-1"]["input_fingerprint"] == fingerprint.of_row(first_dup)
    refused = pq.read_table(output / manifest.REJECTED_FILE).to_pylist()
    assert sorted((r["catalog_row"], r["error_code"]) for r in refused) == [
        (len(good_rows) + len(HOSTILE_IDS) + 1, "missing_product_id"),
        (len(good_rows) + len(HOSTILE_IDS) + 2, "duplicate_product_id"),
        (len(good_rows) + len(HOSTILE_IDS) + 3, "missing_product_id"),
        (len(good_rows) + len(HOSTILE_IDS) + 4, "duplicate_product_id")]

    # every file under the output root, one image per ok record, each where its record says
    assert [p for p in _files(root) if not _under(str(output), str(p))] == []
    assert not os.path.exists("/tmp/evil-backdrop-test.png")
    images = [p for p in _files(output) if p.suffix == ".png"]
    assert sorted(map(str, images)) == sorted(r["output_uri"] for r in records.values())
    assert len({str(p).lower() for p in images}) == len(images)  # Sku-A / SKU-A apart on any disk
    assert not (output / "_incomplete").exists() or not any((output / "_incomplete").iterdir())
    assert current_holder(str(output)) is None  # released

    # reruns: SKU.tmp-2024's image survives, nothing is made again, the refusals stay counted
    tmp_named = Path(records["SKU.tmp-2024"]["output_uri"])
    mtime = tmp_named.stat().st_mtime_ns
    for _ in range(2):
        again = run_backfill(config)
        _assert_accounted(again, len(rows))
        assert again.generated == 0 and again.plan.skipped == len(records) and again.plan.refused == 4
    assert tmp_named.stat().st_mtime_ns == mtime
    assert _manifest(str(output))["SKU.tmp-2024"]["status"] == "ok"


# --------------------------------------------------------------------------- 5: size before bytes


def test_devices_fifos_directories_and_huge_files_fail_their_row(home, model_dir, good_rows, tmp_path):
    from backdrop.batch.run import run_backfill

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    sparse = tmp_path / "sparse.png"
    subprocess.run(["truncate", "-s", "2G", str(sparse)], check=True)  # 2 GB, no blocks used
    (tmp_path / "a-directory.png").mkdir()
    mug = good_rows[0]
    bad = {"dev-zero": ("/dev/zero", "fetch_error"), "fifo": (str(fifo), "fetch_error"),
           "directory": (str(tmp_path / "a-directory.png"), "fetch_error"),
           "sparse-2g": (str(sparse), "image_too_large")}
    rows = good_rows[:2] + [{**mug, "product_id": pid, "image_uri": uri} for pid, (uri, _) in bad.items()] \
        + [{**mug, "product_id": "mask-is-dev-zero", "mask_uri": "/dev/zero"}]
    # /dev in the job's input scope: the read guards behind the scope are what this test is about
    config = _config(_catalog(rows, tmp_path / "catalog.parquet"), model_dir, str(tmp_path / "out"),
                     allow_inputs=("/dev",))
    result = run_backfill(config)  # finishes: each bad input is one failed row
    _assert_accounted(result, len(rows))
    records = _manifest(config.output)
    assert {pid: records[pid]["error_code"] for pid in bad} == {pid: code for pid, (_, code) in bad.items()}
    assert records["mask-is-dev-zero"]["error_code"] == "fetch_error"
    assert "not a regular file" in records["fifo"]["error_message"]
    assert str(2 * 2**30) in records["sparse-2g"]["error_message"]
    assert {records[r["product_id"]]["status"] for r in good_rows[:2]} == {"ok"}


def test_an_oversized_object_on_s3_fails_its_row_unread(home, model_dir, good_rows, s3_bucket, tmp_path):
    from backdrop import storage
    from backdrop.batch.run import run_backfill
    from backdrop.limits import Limits

    limits = Limits(max_image_bytes=256 * 1024)
    storage.write_bytes(f"{s3_bucket}/big.png", b"\0" * (limits.max_image_bytes + 1))
    rows = good_rows[:1] + [{**good_rows[0], "product_id": "too-big", "image_uri": f"{s3_bucket}/big.png"}]
    config = _config(_catalog(rows, tmp_path / "catalog.parquet"), model_dir, f"{s3_bucket}/out", limits=limits,
                     allow_inputs=(s3_bucket,))
    result = run_backfill(config)
    _assert_accounted(result, 2)
    records = _manifest(config.output)
    assert records["too-big"]["error_code"] == "image_too_large" and records[rows[0]["product_id"]]["status"] == "ok"
    assert "262,144" in records["too-big"]["error_message"]


# --------------------------------------------------------------------------- 3: fingerprints, stale outputs


def test_changed_inputs_regenerate_and_a_failed_retry_keeps_the_last_good_image(home, model_dir, good_rows, tmp_path):
    from backdrop.batch import nightly
    from backdrop.batch.manifest import DONE, INPUT_CHANGED
    from backdrop.batch.run import run_backfill

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rows = []
    for r in good_rows:  # private copies of the inputs, so the test can edit them
        img = inputs / f"{r['product_id']}.png"
        img.write_bytes(Path(r["image_uri"]).read_bytes())
        rows.append({**r, "image_uri": str(img)})
    catalog = tmp_path / "catalog.parquet"
    config = _config(_catalog(rows, catalog), model_dir, str(tmp_path / "out"))
    first = run_backfill(config)
    assert first.ok == len(rows) and first.stale == 0
    before = _manifest(config.output)

    # three edits: new pixels for one, a new prompt for another, a corrupt photo for a third
    from PIL import Image

    edited, prompted, broken = rows[0], rows[1], rows[3]
    with Image.open(edited["image_uri"]) as im:
        im.transpose(Image.FLIP_LEFT_RIGHT).save(edited["image_uri"])
    rows[1] = {**prompted, "prompt": "on a marble table"}
    Path(broken["image_uri"]).write_bytes(b"\x89PNG\r\n\x1a\n not an image any more")
    _catalog(rows, catalog)

    plan, results = nightly.run_nightly(config)
    assert plan.plan.counts[("mug", INPUT_CHANGED)] + plan.plan.counts[("laptop", INPUT_CHANGED)] == 3
    assert sum(n for (_, r), n in plan.plan.counts.items() if r == DONE) == len(rows) - 3
    assert "input_changed" in plan.format()
    [result] = results
    _assert_accounted(result, len(rows))
    assert result.generated == 2 and result.failed == 1 and result.stale == 1
    after = _manifest(config.output)
    changed = {edited["product_id"], prompted["product_id"], broken["product_id"]}
    for pid, rec in after.items():
        assert (rec["created_at"] != before[pid]["created_at"]) == (pid in changed)
    lost = after[broken["product_id"]]
    assert lost["status"] == "failed" and lost["output_uri"] is None
    assert lost["last_good_uri"] == before[broken["product_id"]]["output_uri"] and os.path.exists(lost["last_good_uri"])
    assert "1 stale" in result.summary()
    again = nightly.plan_nightly(config).plan
    assert again.todo == 1 and again.stale == 1 and "stale outputs: 1" in again.format()


# --------------------------------------------------------------------------- 4: one writer per output


def _expired_lease(output: str, pid: int, host: str | None = None, age: float = 0.0) -> dict:
    now = time.time()
    return {"token": "ghost", "kind": "backfill", "host": host or socket.gethostname(), "pid": pid,
            "started_at": now - 1000, "heartbeat_at": now - age, "expires_at": now - age + 30}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_lease_refuses_a_second_writer_and_takes_over_a_dead_one(where, tmp_path, request):
    from backdrop import storage
    from backdrop.batch.lease import LEASE_FILE, STAGING_DIR, Lease
    from backdrop.errors import LeaseLostError, OutputBusyError

    output = str(tmp_path / "out") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/out"
    first = Lease(output, "backfill", ttl_s=30).acquire()
    try:
        with pytest.raises(OutputBusyError) as busy:
            Lease(output, "nightly", ttl_s=30).acquire(wait_s=0)
        assert first.token in busy.value.message and f"pid {os.getpid()}" in busy.value.message
        assert socket.gethostname() in busy.value.message
        assert first.renew()
    finally:
        first.release()
    assert current_holder(output) is None  # released: a tombstone, which keeps the epoch counting
    second = Lease(output, "backfill", ttl_s=30).acquire()
    assert (first.epoch, second.epoch) == (1, 2) and second.namespace == f"e000002-{second.token}"
    second.release()

    # a lease whose holder stopped renewing long ago (another host): expired, taken over
    lease_uri = storage.join(output, LEASE_FILE)
    storage.write_bytes(lease_uri, json.dumps(_expired_lease(output, 1, host="elsewhere", age=60)).encode())
    storage.write_bytes(storage.join(output, STAGING_DIR, "ghost", "half-an-image"), b"...")
    taken = Lease(output, "backfill", ttl_s=30).acquire()
    assert storage.list_dir(storage.join(output, STAGING_DIR)) in ([], [taken.token])  # the ghost's debris is gone
    # a run that lost its lease (the lease was taken over after it stalled) may not consolidate
    storage.write_bytes(lease_uri, json.dumps(_expired_lease(output, 1, host="elsewhere", age=0)).encode())
    with pytest.raises(LeaseLostError):
        taken.check()
    taken.release()
    assert storage.exists(lease_uri)  # not ours any more: left alone

    # a live lease of another host is respected; a dead pid on this host is not
    storage.write_bytes(lease_uri, json.dumps(_expired_lease(output, 1, host="elsewhere", age=0)).encode())
    with pytest.raises(OutputBusyError, match="elsewhere"):
        Lease(output).acquire()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage.write_bytes(lease_uri, json.dumps(_expired_lease(output, dead.pid, age=0)).encode())
    Lease(output).acquire().release()


@pytest.mark.parametrize("ttl", [60.0, 30.0, 5.0])
def test_lease_s3_calls_give_up_well_within_a_quarter_of_the_ttl(ttl, s3_bucket):
    """boto3's defaults (60 s connect + 60 s read, several attempts) could outlast the TTL in one
    slow renewal; the lease's own client gives a renewal (a GET and a PUT) under ttl / 4."""
    from backdrop.batch.lease import Lease, lease_client_config

    cfg = lease_client_config(ttl)
    attempts = cfg.retries["max_attempts"]
    assert 2 * attempts * (cfg.connect_timeout + cfg.read_timeout) < ttl / 4
    lease = Lease(f"{s3_bucket}/out", ttl_s=ttl)
    used = lease.store.client.meta.config
    assert (used.connect_timeout, used.read_timeout) == (cfg.connect_timeout, cfg.read_timeout)


def test_a_lease_that_cannot_renew_before_it_expires_is_lost(tmp_path):
    """Renewals failing (a network partition) until expires_at: another run may have taken the
    lease over meanwhile, so this run counts it lost and may not consolidate."""
    from backdrop.batch.lease import Lease
    from backdrop.errors import LeaseLostError

    lease = Lease(str(tmp_path / "out"), ttl_s=0.4).acquire()
    try:
        def unreachable(*args, **kwargs):
            raise OSError("connection timed out")

        lease.store.swap = unreachable
        deadline = time.monotonic() + 60  # a hang guard: the heartbeat notices at expiry
        while lease.lost is None:
            assert time.monotonic() < deadline, "the heartbeat never declared the lease lost"
            time.sleep(0.05)
        with pytest.raises(LeaseLostError, match="no renewal succeeded before it expired.*connection timed out"):
            lease.check()
    finally:
        lease.release()


def test_two_processes_into_one_output_lose_nothing(home, model_dir, good_rows, tmp_path):
    """Two `backdrop generate` processes start together into one output: one waits for the other's
    lease; every row is generated exactly once and the manifest holds every row."""
    catalog = _catalog(good_rows, tmp_path / "catalog.parquet")
    output = tmp_path / "out"
    argv = [sys.executable, "-m", "backdrop.cli", "generate", "--catalog", catalog, "--model", model_dir,
            "--output", str(output), "--steps", "1", "--batch-size", "2", "--wait-for-lease", "300"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)])}
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=600)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                end_process_tree(p, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], outs
    n = len(good_rows)
    assert sorted(f"{n} rows in scope = {n} ok + 0 failed" in o for o in outs) == [True, True]
    generated = sorted(int(o.split("  generate")[1].split()[0]) for o in outs)
    assert generated == [0, n]  # the second found every row done: nothing made twice
    records = _manifest(str(output))
    assert sorted(records) == sorted(r["product_id"] for r in good_rows)
    assert {r["status"] for r in records.values()} == {"ok"}
    assert not list((output / "manifest" / "parts").rglob("*.parquet"))


def test_a_second_run_refuses_with_the_holder_named(home, model_dir, good_rows, tmp_path, capsys):
    from backdrop.batch.lease import Lease
    from backdrop.cli import main

    catalog = _catalog(good_rows[:1], tmp_path / "catalog.parquet")
    with Lease(str(tmp_path / "out"), "nightly").acquire() as holder:
        code = main(["generate", "--catalog", catalog, "--model", model_dir, "--output", str(tmp_path / "out"),
                     "--steps", "1"])
    assert code == 75
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"nightly run {holder.token}" in err and "--wait-for-lease" in err


# --------------------------------------------------------------------------- 7: chaos, on Ray


def _parts(output: str) -> int:
    from backdrop.batch.manifest import part_paths

    return len(part_paths(output))


def _job(script: str | Path, args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "jobs" / script), *args, "--ray-address", "local",
                             "--num-cpus", "2"], start_new_session=True, text=True, **kw)


@pytest.mark.slow
def test_chaos_kill_rerun_then_nightly_after_edits(home, model_dir, good_rows, tmp_path, s3_bucket, capsys):
    """One hostile catalog on S3: SIGKILL the Ray job's driver mid-run, run it again, edit three
    inputs, run the nightly job; exactly the expected rows are made, every count is exact.

    (Local disk runs the same lease, manifest and stages in the tests above and in
    ``test_two_processes_into_one_output_lose_nothing``; one chaos run on the object store,
    where the conditional writes differ, is what this adds.)"""
    from PIL import Image

    from backdrop import storage
    from backdrop.batch import manifest

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    rows = []
    for r in good_rows:
        img, mask = inputs / f"{r['product_id']}.png", inputs / f"{r['product_id']}-mask.png"
        img.write_bytes(Path(r["image_uri"]).read_bytes())
        mask.write_bytes(Path(r["mask_uri"]).read_bytes())
        rows.append({**r, "image_uri": str(img), "mask_uri": str(mask)})
    mug = rows[1]  # not among the edited rows below: rows sharing an edited input are remade too
    hostile = [{**mug, "product_id": pid, "category": c} for pid, c in
               [("../../../etc/cron.d/x", "mug"), ("SKU.tmp-2024", "mug"), ("Sku-A", "laptop"), ("SKU-A", "laptop")]]
    catalog_rows = rows + hostile + [{**mug, "product_id": "SKU-A"}, {**mug, "product_id": None},
                                     {**mug, "product_id": "dev-zero", "image_uri": "/dev/zero"}]
    n_in, n_ids = len(catalog_rows), len(rows) + len(hostile) + 1  # 1: dev-zero
    catalog = tmp_path / "catalog.parquet"
    _catalog(catalog_rows, catalog)
    output = f"{s3_bucket}/out"
    args = ["--catalog", str(catalog), "--model", model_dir, "--output", output, "--steps", "2",
            "--batch-size", "1", "--max-failure-rate", "1", "--executor", "ray"]

    # 1. kill the driver mid-run: its generator lets two batches through and holds the third
    #    (tests/held_backfill.py), so "mid-run" does not depend on the machine's speed
    hold = tmp_path / "hold"
    hold.touch()
    proc = _job(REPO / "tests" / "held_backfill.py", [*args, "--pass-batches", "2", "--hold-file", str(hold)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while _parts(output) < 2:
            assert proc.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "no manifest parts after 300 s (hang guard)"
            time.sleep(0.1)
    finally:
        end_process_tree(proc, signal.SIGKILL)
    done_before = {r["product_id"] for r in manifest.read_records(output).to_pylist() if r["status"] == "ok"}
    assert _parts(output) == 2 and manifest.read_records(output).num_rows == 2  # the two batches let through
    assert 1 <= len(done_before) <= 2
    assert storage.exists(storage.join(output, "_lease.json"))  # the killed run's lease is still there
    fs, root = storage.filesystem(output)
    for key in fs.find(f"{root}/images"):  # readers never see a partial image, even from a killed run
        with fs.open(key, "rb") as f, Image.open(f) as im:
            im.load()
    made_before = {r["product_id"]: r["created_at"] for r in manifest.read_records(output).to_pylist()
                   if r["status"] == "ok"}

    # 2. rerun at once: the dead driver's lease (same host, pid gone) is taken over. The local
    #    executor: the lease, the plan and the resume are executor-independent, and a second Ray
    #    start-up would only cost CI time (the Ray executor's resume is test_batch.py's killed-actor test).
    #    Both runs below are the jobs' own main() in this process (a job process would only add
    #    its interpreter's start-up); the killed run above was a process of its own.
    from jobs import catalog_backfill, nightly_regen

    local = [*args[:-1], "local"]
    code = catalog_backfill.main(local)
    out = "".join(capsys.readouterr())
    assert code == 0, out[-4000:]
    assert f"{n_in} rows in scope = {n_in - 3} ok + 3 failed" in out  # a duplicate, a null id, /dev/zero
    records = manifest.latest(manifest.read_records(output)).to_pylist()
    by_id = {r["product_id"]: r for r in records}
    assert len(records) == n_ids and set(by_id) == {r["product_id"] for r in catalog_rows if r["product_id"]}
    assert {pid for pid, r in by_id.items() if r["status"] != "ok"} == {"dev-zero"}
    assert {pid: by_id[pid]["created_at"] for pid in made_before} == made_before  # not made twice

    # 3. edit three inputs (pixels, mask, prompt), then the nightly job regenerates exactly those
    with Image.open(rows[0]["image_uri"]) as im:
        im.transpose(Image.FLIP_LEFT_RIGHT).save(rows[0]["image_uri"])
    with Image.open(rows[4]["mask_uri"]) as im:
        im.transpose(Image.FLIP_TOP_BOTTOM).save(rows[4]["mask_uri"])
    edited = {rows[0]["product_id"], rows[4]["product_id"], rows[2]["product_id"]}
    catalog_rows[2] = {**catalog_rows[2], "prompt": "on a marble table"}
    _catalog(catalog_rows, catalog)
    # the nightly planner and its backfills are executor-independent: in-process here too
    code = nightly_regen.main(local)
    out = "".join(capsys.readouterr())
    assert code == 0, out[-4000:]
    assert "input_changed" in out
    after = {r["product_id"]: r for r in manifest.latest(manifest.read_records(output)).to_pylist()}
    remade = {pid for pid in after if after[pid]["created_at"] != by_id[pid]["created_at"]}
    assert remade == edited | {"dev-zero"}  # the three edits, and the failed row retried
    assert {pid for pid, r in after.items() if r["status"] != "ok"} == {"dev-zero"}
    assert f"{n_in} rows in scope = {n_in - 3} ok + 3 failed" in out

    # nothing outside the output root; one image per ok record, where its record says
    fs, path = storage.filesystem(s3_bucket)
    every = fs.find(path)
    assert all(k.startswith(f"{path}/out/") for k in every), every
    images = sorted("s3://" + k for k in fs.find(f"{path}/out/images"))
    assert images == sorted(r["output_uri"] for r in after.values() if r["status"] == "ok")
    assert not storage.list_dir(storage.join(output, "_incomplete"))
    assert current_holder(output) is None  # released


def _tree(output: str) -> dict[str, bytes]:
    """Every object under ``output`` and its bytes."""
    from backdrop import storage

    fs, root = storage.filesystem(output)
    return {k: fs.cat_file(k) for k in fs.find(root)}


@pytest.mark.slow
def test_a_run_that_stalled_past_its_lease_writes_nothing_after_a_takeover(home, model_dir, good_rows, tmp_path,
                                                                           s3_bucket):
    """Issue #22's fencing chaos: stall run A past its TTL (SIGSTOP), let B take the output over
    and finish, resume A. The manifest and every object are exactly what B left, and A exits
    non-zero naming B."""
    from backdrop.batch import manifest
    from backdrop.batch.args import LOST_EXIT
    from backdrop.batch.lease import _store

    catalog = _catalog(good_rows, tmp_path / "catalog.parquet")
    output = f"{s3_bucket}/fenced"
    args = ["--catalog", catalog, "--model", model_dir, "--output", output, "--steps", "2", "--batch-size", "1",
            "--executor", "local"]
    hold = tmp_path / "hold"
    hold.touch()
    # A writes one batch, then its generator holds the second (a hold, not a race with the clock).
    # A 10 s TTL leaves each renewal attempt 0.5 s (lease_client_config): ample on a busy machine.
    a = _job(REPO / "tests" / "held_backfill.py", [*args, "--lease-ttl", "10", "--pass-batches", "1",
                                                   "--hold-file", str(hold)],
             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300  # hang guards only
        while _parts(output) < 1:
            assert a.poll() is None and time.monotonic() < deadline, "A ended or hung before its first batch"
            time.sleep(0.1)
        a_token = _store(output).read().token
        os.killpg(a.pid, signal.SIGSTOP)  # stalled: no heartbeat, no progress
        while current_holder(output) is not None:  # until A's lease has expired
            assert time.monotonic() < deadline, "A's lease never expired"
            time.sleep(0.1)

        # B: the same job's run, in this process (another process needs no more to show the takeover)
        from backdrop.batch.config import BackfillConfig
        from backdrop.batch.run import run_backfill

        b = run_backfill(BackfillConfig(catalog=catalog, model=model_dir, output=output, steps=2, batch_size=1,
                                        executor="local"))
        assert (b.ok, b.failed, b.plan.skipped) == (len(good_rows), 0, 1)  # A's first batch adopted, not redone
        b_lease = _store(output).read()
        assert b_lease.token != a_token and b_lease.epoch == 2 and b_lease.released_at is not None
        left_by_b = _tree(output)

        hold.unlink()
        os.killpg(a.pid, signal.SIGCONT)
        out_a = a.communicate(timeout=600)[0]
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGCONT)
            end_process_tree(a, signal.SIGKILL)
    assert a.returncode == LOST_EXIT, out_a[-4000:]
    assert f"run {a_token} lost its lease on {output} to backfill run {b_lease.token}" in out_a
    assert _tree(output) == left_by_b  # A wrote nothing after B took over: not an image, not a part

    records = manifest.read_records(output).to_pylist()
    assert len(records) == len(good_rows) and {r["status"] for r in records} == {"ok"}
    # the batch A wrote while it held the lease was adopted by B's plan; B made the rest
    assert sorted(r["lease_epoch"] for r in records) == [1] + [2] * (len(good_rows) - 1)
    images = sorted("s3://" + k for k in left_by_b if "/images/" in k)
    assert images == sorted(r["output_uri"] for r in records)
    assert all(f"/images/e{r['lease_epoch']:06d}-" in r["output_uri"] for r in records)
    assert not [k for k in left_by_b if "/manifest/parts/" in k]  # consolidated


# --------------------------------------------------------------------------- issue #22: isolation



def test_malformed_uris_and_vanishing_masks_fail_their_row_only(home, model_dir, good_rows, tmp_path):
    """One malformed URI, or a cut-out whose mask leaves no background at the model's size, is
    one failed row: its batch mates are done, in the backfill (with best-of-2 QA scoring) and in
    the nightly planner."""
    import numpy as np
    from PIL import Image

    from backdrop.batch import fingerprint
    from backdrop.batch.nightly import plan_nightly
    from backdrop.batch.run import run_backfill
    from backdrop.models.generator import BackdropModel
    from backdrop.quality.qa import attach_scorer

    model = BackdropModel.from_pretrained(model_dir)
    attach_scorer(model, _catalog(good_rows, tmp_path / "train.parquet"))
    scored = str(tmp_path / "scored-model")
    model.save_pretrained(scored)

    cutout = np.full((328, 400, 4), 200, np.uint8)
    cutout[..., 3] = 255
    cutout[0, :3, 3] = 0  # a handful of transparent pixels: background at full size, none at 64 px
    Image.fromarray(cutout, "RGBA").save(tmp_path / "cutout.png")
    mug = good_rows[0]
    rows = good_rows[:1] + [{**mug, "product_id": pid, "image_uri": uri} for pid, uri in MALFORMED_URIS.items()] \
        + [{**mug, "product_id": "opaque-cutout", "image_uri": str(tmp_path / "cutout.png"), "mask_uri": None}] \
        + good_rows[1:3]
    assert all(fingerprint.object_identity(uri).startswith(("missing", "unreadable:"))
               for uri in MALFORMED_URIS.values())
    config = _config(_catalog(rows, tmp_path / "catalog.parquet"), scored, str(tmp_path / "out"),
                     candidates=2, batch_size=8)
    plan = plan_nightly(config)  # the planner fingerprints every row: it must not raise either
    assert plan is not None
    result = run_backfill(config)
    _assert_accounted(result, len(rows))
    records = _manifest(config.output)
    assert {records[r["product_id"]]["status"] for r in good_rows[:3]} == {"ok"}
    assert all(records[pid]["status"] == "failed" and records[pid]["error_stage"] == "load"
               for pid in MALFORMED_URIS)
    assert records["opaque-cutout"]["error_code"] == "full_mask"
    assert "no background at the model's generation size" in records["opaque-cutout"]["error_message"]


@pytest.mark.parametrize("moment", ["before", "after"])
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_record_names_the_inputs_its_pixels_were_read_from(where, moment, good_rows, tmp_path, request,
                                                             monkeypatch):
    """An input replaced just before or just after the load stage reads it: the record's
    fingerprint always names the bytes that were read (so a later plan sees a replacement it
    did not use as input_changed), never a stat taken on either side of the read."""
    from backdrop import storage
    from backdrop.batch import fingerprint
    from backdrop.batch.records import load_items

    root = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    row = dict(good_rows[0])
    for field in ("image_uri", "mask_uri"):
        uri = storage.join(root, "inputs", f"{field}.png")
        storage.write_bytes(uri, Path(row[field]).read_bytes())
        row[field] = uri
    old = fingerprint.of_row(row)
    replacement = Path(good_rows[1]["image_uri"]).read_bytes()
    real_read = storage.read_object

    def replace():
        if where == "local":  # a new file renamed over the old one, as editors and sync tools do
            os.replace(_write(tmp_path / "new.png", replacement), storage.filesystem(row["image_uri"])[1])
        else:
            storage.write_bytes(row["image_uri"], replacement)

    def read_around_a_replacement(uri, max_bytes=None):
        if uri == row["image_uri"] and moment == "before":
            replace()
        got = real_read(uri, max_bytes)
        if uri == row["image_uri"] and moment == "after":
            replace()
        return got

    monkeypatch.setattr(storage, "read_object", read_around_a_replacement)
    item = load_items([{**row, "placement": "photo"}])[0]
    assert item.failure is None
    new = fingerprint.of_row(row)
    assert new != old  # a stat sees the replacement
    pixels_from_replacement = moment == "before"
    assert item.row["input_fingerprint"] == (new if pixels_from_replacement else old)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_catalog_inputs_outside_the_jobs_scope_fail_their_row_unread(home, model_dir, good_rows, tmp_path,
                                                                     monkeypatch):
    """Issue #22 item 6: a job reads inputs only under its catalog's folder (or bucket) and the
    prefixes it is given; anything else, however spelled, is a failed row ``input_out_of_scope``
    and no byte of it appears anywhere."""
    import shutil

    from backdrop.batch.run import run_backfill

    monkeypatch.delenv("BACKDROP_ALLOW_INPUTS")  # the job's own default scope, as deployed
    here = tmp_path / "catalog"
    (here / "img").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET-BYTES-" + Path(good_rows[0]["image_uri"]).read_bytes())
    inside = []
    for r in good_rows[:2]:
        img, mask = here / "img" / Path(r["image_uri"]).name, here / "img" / Path(r["mask_uri"]).name
        shutil.copy(r["image_uri"], img), shutil.copy(r["mask_uri"], mask)
        inside.append({**r, "image_uri": str(img), "mask_uri": str(mask)})
    shutil.copy(good_rows[2]["image_uri"], elsewhere / "extra.png")
    shutil.copy(good_rows[2]["mask_uri"], elsewhere / "extra-mask.png")
    (here / "img" / "link.png").symlink_to(secret)  # inside by name, outside in fact
    base = inside[0]
    hostile = {
        "proc": "/proc/self/environ", "etc": "/etc/hostname", "file-scheme": "file:///etc/hostname",
        "dotdot": str(here / "img" / ".." / ".." / "secret.png"), "symlink": str(here / "img" / "link.png"),
        "other-bucket": "s3://some-other-bucket/x.png", "relative": "img/x.png", "gopher": "gopher://h/x.png",
    }
    rows = inside + [{**base, "product_id": pid, "image_uri": uri} for pid, uri in hostile.items()]
    rows.append({**base, "product_id": "ref-outside", "reference_uri": str(secret)})
    rows.append({**good_rows[2], "product_id": "allowed-extra", "image_uri": str(elsewhere / "extra.png"),
                 "mask_uri": str(elsewhere / "extra-mask.png")})
    catalog = _catalog(rows, here / "catalog.parquet")

    result = run_backfill(_config(catalog, model_dir, str(tmp_path / "out"), allow_inputs=(str(elsewhere),)))
    _assert_accounted(result, len(rows))
    records = _manifest(str(tmp_path / "out"))
    assert {pid for pid, r in records.items() if r["status"] == "ok"} == \
        {r["product_id"] for r in inside} | {"allowed-extra"}
    refused = {pid: r for pid, r in records.items() if r["status"] != "ok"}
    assert set(refused) == set(hostile) | {"ref-outside"}
    assert {r["error_code"] for r in refused.values()} == {"input_out_of_scope"}
    assert "reference_uri is outside" in refused["ref-outside"]["error_message"]
    text = json.dumps(list(records.values())) + result.summary()
    assert "SECRET" not in text and "PATH=" not in text  # nothing was read: no byte of it can leak

    # a prefix that is not a canonical s3://bucket[/prefix] or an absolute folder is refused up front
    from backdrop.errors import InvalidParameterError

    for bad in ("relative/folder", "s3://Bad_Bucket!/x", "s3://b/../x"):
        with pytest.raises(InvalidParameterError):
            _config(catalog, model_dir, str(tmp_path / "o2"), allow_inputs=(bad,))


def test_an_output_over_the_work_budget_fails_alone_with_its_figure(home, model_dir, good_rows, tmp_path):
    """The batch path prices each output as HTTP prices a request (megapixels x candidates x
    steps): over ``max_request_work`` that one output fails as ``request_too_large``, with its
    figure, and the row's other placements are made."""
    from dataclasses import replace

    from backdrop.batch.run import run_backfill
    from backdrop.limits import DEFAULT_LIMITS

    limits = replace(DEFAULT_LIMITS, max_request_work=1.0)  # 1 megapixel-step
    config = _config(_catalog(good_rows[:1], tmp_path / "catalog.parquet"), model_dir, str(tmp_path / "out"),
                     placements=("1:1", "1200x1000"), limits=limits)
    result = run_backfill(config)
    _assert_accounted(result, 2)
    from backdrop.batch import manifest

    records = {r["placement"]: r for r in manifest.read_records(config.output).to_pylist()}
    assert records["1:1"]["status"] == "ok"
    big = records["1200x1000"]
    assert (big["status"], big["error_code"]) == ("failed", "request_too_large")
    assert "1.2 output megapixels x 1 candidates x 1 steps" in big["error_message"]


def test_one_progress_line_per_interval_with_rate_and_eta(caplog, monkeypatch):
    from backdrop.batch import run

    clock = iter([0.0, 1.0, 2.0, 11.0, 12.0])  # Progress starts at 0; updates at 1, 2, 11, 12 s
    monkeypatch.setattr(run.time, "monotonic", lambda: next(clock))
    progress = run.Progress(4, every_s=10)
    with caplog.at_level("INFO", logger="backdrop.batch.run"):
        for done in (1, 2, 3, 4):
            progress.update(done)
    assert [r.getMessage() for r in caplog.records] == [
        "3/4 rows done (75%), 0.27 rows/s, ETA 4 s",  # the first update 10 s after the last line
        "4/4 rows done (100%), 0.33 rows/s, ETA 0 s",  # and always the last
    ]


def test_real_world_oddities_are_ok_or_a_typed_failure_in_process(home, model_dir, good_rows, tmp_path):
    """EXIF rotations, CMYK, 16-bit, palette, opaque cut-outs and malformed URIs (tests/oddities.py)
    beside good rows: the run completes and every row is ok or its typed failure. The same
    catalog runs on Ray in test_batch.py."""
    from backdrop.batch.run import run_backfill

    odd, expected = oddity_rows(tmp_path / "odd", good_rows[0])
    rows = good_rows[1:3] + odd
    result = run_backfill(_config(_catalog(rows, tmp_path / "catalog.parquet"), model_dir, str(tmp_path / "out")))
    _assert_accounted(result, len(rows))
    records = _manifest(str(tmp_path / "out"))
    assert {pid: records[pid]["error_code"] for pid in expected} == expected
    assert {records[r["product_id"]]["status"] for r in good_rows[1:3]} == {"ok"}
