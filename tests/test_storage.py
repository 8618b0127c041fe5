"""backdrop.storage against a local directory and a real S3-compatible server (moto)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backdrop import storage
from backdrop.errors import FetchError

TREE = {
    "top.txt": b"top",
    "a/one.bin": bytes(range(256)),
    "a/b/two.json": b'{"k": 2}',
    "a/b/c/three.txt": b"",
}


@pytest.fixture(params=["local", "s3"])
def base_uri(request, tmp_path):
    """A place to write: a local directory or an ``s3://`` bucket on the test server."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_bucket")


def write_tree(root: Path) -> None:
    for rel, data in TREE.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
    }


def test_write_read_exists_round_trip(base_uri):
    uri = storage.join(base_uri, "nested", "dir", "obj.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"hello\x00world")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"hello\x00world"
    storage.write_bytes(uri, b"second")  # overwrite
    assert storage.read_bytes(uri) == b"second"


def test_read_missing_object_is_a_fetch_error(base_uri):
    uri = storage.join(base_uri, "no", "such", "object.png")
    with pytest.raises(FetchError) as e:
        storage.read_bytes(uri)
    assert str(e.value).startswith("fetch_error: cannot read ")
    assert "object.png" in str(e.value)


def test_download_of_a_missing_prefix_is_a_fetch_error(base_uri, tmp_path):
    with pytest.raises(FetchError):
        storage.download_dir(storage.join(base_uri, "nothing-here"), tmp_path / "dl")


def test_upload_download_local_copy_round_trip(base_uri, tmp_path):
    src = tmp_path / "src"
    write_tree(src)
    uri = storage.join(base_uri, "models", "v1")
    storage.upload_dir(src, uri)
    assert storage.read_bytes(storage.join(uri, "a", "b", "two.json")) == b'{"k": 2}'

    dest = tmp_path / "dest"
    dest.mkdir()
    storage.download_dir(uri, dest)
    assert read_tree(dest) == TREE

    with storage.local_copy(uri) as local:
        assert os.path.isdir(local)
        assert read_tree(Path(local)) == TREE


def test_parquet_through_pyarrow_filesystem(base_uri):
    table = pa.table({"sku": ["a", "b", "c"], "score": [0.5, 1.5, -2.0], "n": [1, 2, 3]})
    uri = storage.join(base_uri, "tables", "manifest.parquet")
    storage.makedirs(storage.join(base_uri, "tables"))
    fs, path = storage.pyarrow_filesystem(uri)
    pq.write_table(table, path, filesystem=fs)
    assert storage.exists(uri)
    assert pq.read_table(path, filesystem=fs).equals(table)
    # The bytes are a normal Parquet file for any other reader too.
    assert storage.read_bytes(uri)[:4] == b"PAR1"


def test_local_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out" / "result.png"
    storage.write_bytes(str(target), b"old")

    seen = {}
    real_replace = os.replace

    def spy_replace(src, dst):
        # At the moment of the rename the new data is complete in the temp file and a reader
        # of the target still sees the whole old object, never a mix.
        seen["tmp"] = Path(src).read_bytes()
        seen["target"] = Path(dst).read_bytes()
        assert Path(src).parent == Path(dst).parent  # same filesystem: rename is atomic
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    storage.write_bytes(str(target), b"new" * 1000)
    assert seen == {"tmp": b"new" * 1000, "target": b"old"}
    assert target.read_bytes() == b"new" * 1000
    assert os.listdir(target.parent) == ["result.png"]  # no temp file left behind


def test_failed_local_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "result.png"

    def failing_replace(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        storage.write_bytes(str(target), b"data")
    assert os.listdir(tmp_path) == []  # neither the target nor a partial temp file


def test_s3_uses_the_loopback_server(s3_server, s3_bucket):
    assert os.environ["BACKDROP_S3_ENDPOINT_URL"] == s3_server
    assert storage.s3_endpoint_url() == s3_server
    assert s3_server.startswith("http://127.0.0.1:")
    storage.write_bytes(storage.join(s3_bucket, "k"), b"v")

    import boto3  # an independent client sees the object: it is on the server, not mocked

    client = boto3.client("s3", endpoint_url=s3_server)
    body = client.get_object(Bucket=s3_bucket[len("s3://"):], Key="k")["Body"].read()
    assert body == b"v"
