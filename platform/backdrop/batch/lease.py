"""One writer per output: a lease object under the output root, and the run's own scratch space.

Two runs writing one output (a backfill and the nightly CronJob on the same prefix, two
``ray job submit``) would race: one's consolidation could overwrite the manifest the other
wrote from parts the first never read. So every run first takes the output's lease,
``<output>/_lease.json``::

    {"token": "<run token>", "kind": "backfill", "host": "...", "pid": 123, "epoch": 7,
     "started_at": <epoch s>, "heartbeat_at": <epoch s>, "expires_at": <epoch s>, "released_at": null}

* **Atomic.** On S3 the lease is created with a conditional PUT (``If-None-Match: *``), renewed,
  taken over and released with ``If-Match: <ETag>`` of the version that was read: of two
  runs racing, exactly one PUT succeeds. On local disk the same
  read-decide-write happens under an OS file lock (``filelock``, ``_lease.json.lock``), which
  the kernel drops when its process dies, so a SIGKILL never leaves that lock held.
* **Alive.** A heartbeat thread renews the lease every ``ttl / 4``. A run whose renewal finds
  the lease gone or someone else's has lost it, and so has a run that could not renew before
  its own ``expires_at`` (another run may have taken it over meanwhile): :meth:`Lease.check`
  raises before it writes the manifest. On S3 every lease call has its own short timeouts
  and one retry (``lease_client_config``): one renewal (a GET and a PUT) gives up well within
  ``ttl / 4``, where boto3's defaults (60 s connect + 60 s read, 5 attempts) could outlast
  the whole TTL.
* **Taken over.** A lease whose ``expires_at`` has passed belongs to a run that stopped
  renewing (killed, hung, its node lost), and the next run takes it over. A holder on *this*
  host whose pid no longer exists is dead for sure: its lease is taken over at once, so a
  driver killed by SIGKILL and started again on the same machine does not wait for expiry.
  Expiry is judged by the reader's clock, so hosts sharing an output need clocks closer than
  the TTL.
* **Fenced.** Every acquisition raises the lease's ``epoch`` by one (the conditional write makes
  it unique), and a run writes only under its own namespace, ``e<epoch>-<token>``: its images
  under ``images/<namespace>/``, its manifest parts under ``manifest/parts/<namespace>/``, and
  each record carries ``lease_epoch``. A run that stalled past its TTL and wakes up after
  another took over can therefore overwrite nothing of the new holder's; the write stage asks
  the store before each batch (:func:`assert_holder`) and raises ``LeaseLostError`` naming the
  new holder, so the stale run writes at most the batch it was already writing, in its own
  namespace, which no consolidated manifest references (the new holder consolidates only the
  parts it read when it planned and its own; :func:`backdrop.batch.manifest.latest` ranks a
  record by epoch before time).
* **Released, not deleted.** A finished run leaves its lease as a tombstone (``released_at``
  set): free for the next run, but the epoch keeps counting and a stale run that wakes up
  later still learns who took over.
* **Refused, or waited for.** A run that finds a live holder raises
  :class:`~backdrop.errors.OutputBusyError` naming it (host, pid, run, since), or waits up to
  ``wait_s`` seconds for it to go (``--wait-for-lease``).

The run's temporary files live in ``<output>/_incomplete/<token>/`` (see
``storage.write_bytes``'s ``staging``): no output key can take that name (keys are
``images/...``). Holding the lease means no other run is live, so after taking it a run
deletes every other ``_incomplete/*`` (debris of killed runs) and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Callable

from .. import storage
from ..errors import LeaseLostError, OutputBusyError

log = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"
STAGING_DIR = "_incomplete"
DEFAULT_TTL_S = 60.0


@dataclass(frozen=True)
class Holder:
    token: str
    kind: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    expires_at: float
    epoch: int = 0  # leases written before fencing had none
    released_at: float | None = None  # a tombstone: the run ended and let go

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at))
        if self.released_at is not None:
            ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.released_at))
            return f"{self.kind} run {self.token} on {self.host} (pid {self.pid}), started {started}, ended {ended}"
        return (f"{self.kind} run {self.token} on {self.host} (pid {self.pid}), started {started}, "
                f"lease expires in {max(0.0, self.expires_at - time.time()):.0f} s")

    def is_dead(self, now: float) -> bool:
        """Released, expired, or a process of this host that no longer exists."""
        if self.released_at is not None or now >= self.expires_at:
            return True
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _decode(data: bytes | None) -> Holder | None:
    return None if data is None else Holder(**json.loads(data))


NAMESPACE = re.compile(r"e(\d{6,})-([0-9a-f]{32})")


def namespace(epoch: int, token: str) -> str:
    """``e<epoch, 6+ digits>-<token>``: sorts by epoch, and is a safe path segment."""
    return f"e{epoch:06d}-{token}"


def epoch_of(segment: str) -> int | None:
    """The epoch of a namespace segment; None for anything else (files written before fencing)."""
    m = NAMESPACE.fullmatch(segment)
    return int(m.group(1)) if m else None


def token_of(segment: str) -> str | None:
    """The run token of a namespace segment; None for anything else."""
    m = NAMESPACE.fullmatch(segment)
    return m.group(2) if m else None


def _held_by(holder: "Holder | None", token: str) -> bool:
    """Run ``token`` holds the lease ``holder`` describes (and has not released it)."""
    return holder is not None and holder.token == token and holder.released_at is None


# --------------------------------------------------------------------------- conditional stores

Decide = Callable[[Holder | None], "Holder | None"]  # the holder to write over the current one, or None: leave it


class _LocalStore:
    """Read-decide-write under an OS file lock (released by the kernel if the process dies)."""

    def __init__(self, uri: str):
        from filelock import FileLock

        self.path = storage.filesystem(uri)[1]
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.lock = FileLock(self.path + ".lock")

    def _read(self) -> Holder | None:
        try:
            with open(self.path, "rb") as f:
                return _decode(f.read())
        except FileNotFoundError:
            return None

    def read(self) -> Holder | None:
        with self.lock:
            return self._read()

    def swap(self, decide: Decide) -> tuple[bool, Holder | None]:
        with self.lock:
            current = self._read()
            new = decide(current)
            if new is None:
                return False, current
            storage.write_bytes(self.path, json.dumps(asdict(new)).encode())
            return True, new


def lease_client_config(ttl_s: float):
    """botocore settings for the lease's S3 calls: a call (2 attempts of connect + read) takes at
    most ``ttl / 10``, so a renewal's GET and PUT together stay under ``ttl / 5``."""
    from botocore.config import Config

    per_attempt = ttl_s / 20
    return Config(connect_timeout=per_attempt / 3, read_timeout=2 * per_attempt / 3,
                  retries={"max_attempts": 2, "mode": "standard"})


class _S3Store:
    """The same two operations as conditional requests (``If-None-Match`` / ``If-Match``)."""

    def __init__(self, uri: str, ttl_s: float = DEFAULT_TTL_S):
        import boto3

        bucket_key = uri[len("s3://"):]
        self.bucket, _, self.key = bucket_key.partition("/")
        self.client = boto3.client("s3", endpoint_url=storage.s3_endpoint_url(), config=lease_client_config(ttl_s))

    def _get(self) -> tuple[Holder | None, str | None]:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return None, None
        return _decode(obj["Body"].read()), obj["ETag"]

    def read(self) -> Holder | None:
        return self._get()[0]

    def _precondition_failed(self, e) -> bool:
        code = e.response.get("Error", {}).get("Code")
        return code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "412", "409")

    def swap(self, decide: Decide) -> tuple[bool, Holder | None]:
        from botocore.exceptions import ClientError

        current, etag = self._get()
        new = decide(current)
        if new is None:
            return False, current
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(asdict(new)).encode(),
                                   ContentType="application/json", **condition)
        except ClientError as e:
            if not self._precondition_failed(e):
                raise
            return False, self._get()[0]  # someone else wrote first
        return True, new


def _store(output: str, ttl_s: float = DEFAULT_TTL_S):
    uri = storage.join(output, LEASE_FILE)
    return _S3Store(uri, ttl_s) if str(output).startswith("s3://") else _LocalStore(uri)


_STORES: dict[str, object] = {}  # output -> store, for the write stage's per-batch check


def current_holder(output: str) -> Holder | None:
    """The live holder of ``output``'s lease, or None (free, released or expired)."""
    holder = _store(output).read()
    return None if holder is None or holder.is_dead(time.time()) else holder


def assert_holder(output: str, token: str) -> None:
    """Raise ``LeaseLostError`` unless run ``token`` still holds ``output``'s lease: the fence a
    writer passes before each batch it writes (one small read; its store is kept per process)."""
    store = _STORES.get(output)
    if store is None:
        store = _STORES[output] = _store(output)
    holder = store.read()
    if not _held_by(holder, token):
        raise LeaseLostError(_lost_message(output, token, holder))


def _lost_message(output: str, token: str, holder: Holder | None) -> str:
    if holder is None:
        return f"run {token} lost its lease on {output}: the lease object disappeared"
    if holder.token == token:
        return f"run {token} lost its lease on {output}: it was released"
    return f"run {token} lost its lease on {output} to {holder.describe()}"


# --------------------------------------------------------------------------- the lease


class Lease:
    """The output's lease for one run: ``with Lease(output, "backfill").acquire(wait_s): ...``."""

    def __init__(self, output: str, kind: str = "backfill", ttl_s: float = DEFAULT_TTL_S):
        if ttl_s <= 0:
            raise ValueError("the lease TTL must be positive")
        self.output, self.kind, self.ttl_s = output, kind, float(ttl_s)
        self.token = uuid.uuid4().hex
        self.store = _store(output, self.ttl_s)
        self.holder: Holder | None = None
        self.epoch = 0  # this run's epoch, once it has taken the lease
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def namespace(self) -> str:
        """This run's namespace for the files it writes (see the module docstring)."""
        if not self.epoch:
            raise RuntimeError("the lease was never taken")
        return namespace(self.epoch, self.token)

    @property
    def staging(self) -> str:
        """This run's scratch directory for temporary files (see the module docstring)."""
        return storage.join(self.output, STAGING_DIR, self.token)

    def acquire(self, wait_s: float = 0.0, poll_s: float = 1.0) -> "Lease":
        """Take the lease (a free, expired or dead holder's), or raise ``OutputBusyError``."""
        deadline = time.monotonic() + max(0.0, wait_s)

        def take(current: Holder | None) -> Holder | None:
            now = time.time()
            if current is not None and not current.is_dead(now):
                return None
            epoch = (current.epoch if current else 0) + 1
            return Holder(self.token, self.kind, socket.gethostname(), os.getpid(), now, now, now + self.ttl_s, epoch)

        while True:
            taken, current = self.store.swap(take)
            if taken:
                me = current
                break
            if time.monotonic() >= deadline:
                holder = current.describe() if current else "another run (it changed while we looked)"
                raise OutputBusyError(f"{self.output} is being written by {holder}; wait for it, or pass "
                                      f"--wait-for-lease SECONDS to wait for the lease")
            time.sleep(poll_s)
        self.holder, self.epoch = me, me.epoch
        log.info("lease on %s taken: run %s, epoch %d", self.output, self.token, me.epoch)
        self._sweep_staging()
        self._thread = threading.Thread(target=self._heartbeat, name="backdrop-lease", daemon=True)
        self._thread.start()
        return self

    def _sweep_staging(self) -> None:
        """Remove the temporary files of runs that are not live (we hold the lease: all others)."""
        root = storage.join(self.output, STAGING_DIR)
        for name in storage.list_dir(root):
            if name != self.token:
                storage.remove_tree(storage.join(root, name))
                log.info("removed the temporary files of a run that ended early: %s", name)

    def renew(self) -> bool:
        if self.holder is None or self.lost:
            return False
        now = time.time()
        new = replace(self.holder, heartbeat_at=now, expires_at=now + self.ttl_s)
        ok, current = self.store.swap(lambda cur: new if self._live_mine(cur) else None)
        if ok:
            self.holder = new
        else:
            self.lost = _lost_message(self.output, self.token, current)
            log.error("%s", self.lost)
        return ok

    def _live_mine(self, current: Holder | None) -> bool:
        return _held_by(current, self.token)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if not self.renew():
                    return
            except Exception as e:  # noqa: BLE001 - a failed renewal is retried until expiry
                log.warning("lease renewal on %s failed: %s", self.output, e)
                if self.holder is not None and time.time() >= self.holder.expires_at:
                    self.lost = (f"run {self.token} lost its lease on {self.output}: no renewal succeeded "
                                 f"before it expired (last error: {str(e)[:200]})")
                    log.error("%s", self.lost)
                    return

    def check(self) -> None:
        """Raise ``LeaseLostError`` unless this run still holds the lease (call before writing
        what only the holder may write: the consolidated manifest)."""
        if self.lost is None:
            current = self.store.read()
            if not self._live_mine(current):
                self.lost = _lost_message(self.output, self.token, current)
        if self.lost:
            raise LeaseLostError(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.holder is not None and not self.lost:
            storage.remove_tree(self.staging)
            ended = replace(self.holder, released_at=time.time())
            self.store.swap(lambda cur: ended if self._live_mine(cur) else None)
        self.holder = None

    def __enter__(self) -> "Lease":
        if self.holder is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
