"""One way to read and write a URI, local path or ``s3://``.

Everything goes through fsspec (s3fs for S3), so a local directory and a bucket behave the
same to the rest of the library. The S3 endpoint is configurable for S3-compatible servers
(MinIO, Ceph, moto on loopback in the tests) through ``BACKDROP_S3_ENDPOINT_URL`` or the
standard ``AWS_ENDPOINT_URL``; credentials come from the usual AWS environment/profile chain.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import fsspec

import hashlib

from .errors import BackdropError, FetchError, ImageTooLargeError, RegistryError
from .settings import ENDPOINT_ENV_VARS

TMP_MARKER = ".tmp-"  # local writes without a staging dir go to "<name>.tmp-<uuid>" first, then are renamed


def s3_endpoint_url() -> str | None:
    for name in ENDPOINT_ENV_VARS:
        if os.environ.get(name):
            return os.environ[name]
    return None


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it."""
    uri = str(uri)
    if uri.startswith("s3://"):
        kwargs = {}
        endpoint = s3_endpoint_url()
        if endpoint:
            kwargs["client_kwargs"] = {"endpoint_url": endpoint}
        # No listings cache: jobs check for objects that another process just wrote. The instance
        # is cached (per endpoint and process: fsspec's cache is keyed by the arguments and cleared
        # after a fork), so each call does not build a new client (a quarter second each on S3).
        fs = fsspec.filesystem("s3", use_listings_cache=False, **kwargs)
        return fs, uri[len("s3://"):]
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return fsspec.filesystem("file"), os.path.abspath(uri)


def pyarrow_filesystem(uri: str):
    """A pyarrow filesystem for ``uri`` (for Parquet and Ray Data readers/writers)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if str(uri).startswith("s3://"):
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
    return pafs.LocalFileSystem(), path


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def identity(info: dict) -> str:
    """A cheap identity of an object's content from its metadata (an fsspec ``info`` dict): the
    ETag and size on S3 (a new ETag for every overwrite), size + mtime + inode on local disk."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}:{info.get('size')}"
    return f"stat:{info.get('size')}:{info.get('mtime')}:{info.get('ino')}:{info.get('type')}"


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """Read a whole object; a missing or unreadable one raises ``FetchError``.

    With ``max_bytes`` the object's size is checked (stat / HEAD) before a byte is read, only
    regular files are opened (never a device, FIFO or directory), and at most ``max_bytes + 1``
    bytes are ever read, so an object that grows meanwhile cannot exhaust memory either.
    """
    return read_object(uri, max_bytes)[0]


def read_object(uri: str, max_bytes: int | None = None) -> tuple[bytes, str]:
    """:func:`read_bytes`, and the :func:`identity` of exactly the bytes read: taken from the
    read itself (``fstat`` of the open file; on S3 the ETag that s3fs's ranged GETs are
    conditioned on with ``If-Match``), never from a second look that a replacement in between
    could make disagree with the bytes."""
    fs, path = filesystem(uri)
    try:
        if max_bytes is not None:
            info = fs.info(path)
            if info.get("type") != "file":
                raise FetchError(f"cannot read {uri}: not a regular file ({info.get('type')})")
            size = info.get("size")
            if size is None or size > max_bytes:
                raise ImageTooLargeError(f"{uri} is {size if size is not None else 'of unknown size'} bytes, "
                                         f"over the limit of {max_bytes:,} bytes")
        with fs.open(path, "rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
            ident = identity(_opened_info(f))
    except (FetchError, ImageTooLargeError):
        raise
    except (FileNotFoundError, IsADirectoryError, PermissionError, OSError) as e:
        raise FetchError(f"cannot read {uri}: {type(e).__name__}: {e}") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(f"{uri} is over the limit of {max_bytes:,} bytes")
    return data, ident


def _opened_info(f) -> dict:
    """The metadata of an open file: s3fs keeps the HEAD it reads against; a local file is fstat'ed."""
    details = getattr(f, "details", None)
    if details and (details.get("ETag") or details.get("etag")):
        return details
    st = os.fstat(f.fileno())
    return {"size": st.st_size, "mtime": st.st_mtime, "ino": st.st_ino, "type": "file"}

def write_bytes(uri: str, data: bytes, staging: str | None = None) -> None:
    """Write ``data`` so that no reader ever sees a partial object.

    Local files are written to a temporary name and renamed (atomic on POSIX); an S3 PUT is
    atomic by itself. The temporary name is ``<target>.tmp-<uuid>`` beside the target, or, with
    ``staging`` (a directory on the same disk that the writer owns, e.g. a batch run's
    ``_incomplete/<run>/``), a file in it, so a writer killed mid-way leaves its debris only
    where its owner can find and remove it without touching anyone else's files.
    """
    fs, path = filesystem(uri)
    if is_remote(str(uri)):
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if staging is None:
        tmp = f"{path}{TMP_MARKER}{uuid.uuid4().hex}"
    else:
        staging_dir = filesystem(staging)[1]
        os.makedirs(staging_dir, exist_ok=True)
        tmp = os.path.join(staging_dir, uuid.uuid4().hex)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        # A failed write (disk full, interrupted) must not leave the partial temp file behind.
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_tree(uri: str) -> None:
    """Delete a directory or prefix and everything under it (nothing there is fine)."""
    fs, path = filesystem(uri)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass


def list_dir(uri: str) -> list[str]:
    """The base names directly under a directory or prefix (empty when there is none)."""
    fs, path = filesystem(uri)
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    if not is_remote(str(uri)):
        fs.makedirs(path, exist_ok=True)


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local directory tree to ``uri`` (a local path or an ``s3://`` prefix)."""
    local_dir = str(local_dir)
    if not is_remote(uri):
        dest = filesystem(uri)[1]
        if os.path.abspath(local_dir) != dest:
            shutil.copytree(local_dir, dest, dirs_exist_ok=True)
        return
    for root, _, files in os.walk(local_dir):
        for name in files:
            src = os.path.join(root, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            with open(src, "rb") as f:
                write_bytes(join(uri, rel), f.read())


def download_dir(uri: str, local_dir: str | Path) -> None:
    """Copy everything under ``uri`` into ``local_dir``."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise FetchError(f"nothing at {uri}")
    fs.get(path.rstrip("/") + "/", str(local_dir), recursive=True)


@contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local directory with the contents of ``uri``: itself when local, a temp copy for S3."""
    if not is_remote(uri):
        yield filesystem(uri)[1]
        return
    with tempfile.TemporaryDirectory(prefix="backdrop-") as tmp:
        download_dir(uri, tmp)
        yield tmp


def saved_generator_version(uri: str) -> str:
    """The version an unregistered saved generator is known by: a hash of its file names and
    sizes and its ``backdrop.json`` (cheap to compute, changes when a file is replaced by one of
    another size or the config changes). A path that holds no generator is a ``RegistryError``."""
    if not exists(join(uri, "backdrop.json")) and not exists(join(uri, "unet")):
        raise RegistryError(f"no saved generator at {uri}")
    fs, path = filesystem(uri)
    h = hashlib.sha256()
    for f in sorted(fs.find(path, detail=True).items()):
        h.update(f"{os.path.relpath(f[0], path)}:{f[1].get('size')}".encode())
    try:
        h.update(read_bytes(join(uri, "backdrop.json")))
    except BackdropError:
        pass
    return "path-" + h.hexdigest()[:12]
