from __future__ import annotations

import hashlib
import os
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from annotator.errors import StorageError
from annotator.records.schema import PART_ARROW_SCHEMA, validate_row
from annotator.storage.manifest import Manifest, clear, open_output
from annotator.storage.parts import (
    iter_records,
    iter_rows,
    list_parts,
    part_path,
    read_part_metadata,
    write_part,
)
from annotator.storage.retry import is_transient_storage_error, retry
from tests.part_records import META
from tests.part_records import make_records as _records


def test_part_path():
    assert part_path("out", 3) == "out/parts/part-00003.parquet"
    assert part_path("s3://b/run/", 12345) == "s3://b/run/parts/part-12345.parquet"
    assert part_path("o", 123456) == "o/parts/part-123456.parquet"
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError):
            part_path("o", bad)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_write_read_round_trip(tmp_path, mem_output, where):
    output = str(tmp_path / "out") if where == "local" else mem_output
    recs = _records([5, 1, 3, 2, 4])
    path = part_path(output, 0)
    digest = write_part(recs, path, META)
    fs, p = fsspec.core.url_to_fs(path)
    assert digest == hashlib.sha256(fs.cat_file(p)).hexdigest()
    assert read_part_metadata(path) == META
    rows = list(iter_rows([path]))
    assert [r["image_id"] for r in rows] == [1, 2, 3, 4, 5]  # sorted
    for r in rows:
        validate_row(r)
    back = list(iter_records([path], batch_size=2))
    assert back == sorted(recs, key=lambda r: r.image_id)
    assert list_parts(output) == [path]
    assert fs.ls(fs._parent(p), detail=False) == [p]  # no temporary files left


def test_part_file_schema_and_row_groups(tmp_path):
    path = part_path(str(tmp_path), 1)
    write_part(_records(range(1, 140)), path, META)
    pf = pq.ParquetFile(path)
    assert pf.schema_arrow.remove_metadata().equals(PART_ARROW_SCHEMA)
    assert pf.metadata.num_rows == 139
    assert pf.metadata.num_row_groups == 3  # 64-row groups keep streaming reads small


def test_iter_rows_columns_and_order(tmp_path):
    p0, p1 = part_path(str(tmp_path), 0), part_path(str(tmp_path), 1)
    write_part(_records([4, 5]), p1, META)
    write_part(_records([1, 2, 3]), p0, META)
    rows = list(iter_rows(list_parts(str(tmp_path)), columns=["image_id", "status"], batch_size=1))
    assert rows == [
        {"image_id": 1, "status": "ok"},
        {"image_id": 2, "status": "ok"},
        {"image_id": 3, "status": "error"},
        {"image_id": 4, "status": "ok"},
        {"image_id": 5, "status": "ok"},
    ]
    with pytest.raises(ValueError, match="unknown"):
        list(iter_rows([p0], columns=["nope"]))


def test_write_part_rejects_duplicates_and_bad_metadata(tmp_path):
    with pytest.raises(ValueError, match="duplicates"):
        write_part(_records([1, 1]), part_path(str(tmp_path), 0), META)
    with pytest.raises(TypeError):
        write_part(_records([1]), part_path(str(tmp_path), 0), ["not", "a", "dict"])
    with pytest.raises(ValueError):
        write_part(_records([1]), part_path(str(tmp_path), 0), {"x": float("nan")})


def test_list_parts_ignores_temporaries_and_others(tmp_path):
    assert list_parts(str(tmp_path)) == []
    d = tmp_path / "parts"
    d.mkdir()
    for name in [
        "part-00002.parquet",
        "part-00000.parquet",
        "part-00001.parquet.tmp-abc",
        "notes.txt",
        "part-1.parquet",
    ]:
        (d / name).write_bytes(b"x")
    assert list_parts(str(tmp_path)) == [part_path(str(tmp_path), 0), part_path(str(tmp_path), 2)]


def test_read_part_metadata_of_foreign_parquet(tmp_path):
    import pyarrow as pa

    path = str(tmp_path / "x.parquet")
    pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(ValueError, match="annotator"):
        read_part_metadata(path)


class _FlakyOpen:
    """Wraps fs.open so its first `failures` write opens raise ConnectionError."""

    def __init__(self, fs, failures):
        self.fs, self.failures, self.calls = fs, failures, 0
        self._open = fs.open

    def __call__(self, path, mode="rb", *a, **kw):
        if "w" in mode:
            self.calls += 1
            if self.calls <= self.failures:
                raise ConnectionError("connection reset by peer")
        return self._open(path, mode, *a, **kw)


def test_write_part_retries_transient_errors(tmp_path, monkeypatch):
    monkeypatch.setattr("annotator.storage.retry.time.sleep", lambda s: None)
    fs = fsspec.filesystem("file")
    flaky = _FlakyOpen(fs, failures=2)
    monkeypatch.setattr(fs, "open", flaky)
    path = part_path(str(tmp_path), 0)
    write_part(_records([1, 2]), path, META, retries=3)
    assert flaky.calls == 3
    assert [r["image_id"] for r in iter_rows([path])] == [1, 2]


def test_write_part_gives_up_and_keeps_old_file(tmp_path, monkeypatch):
    monkeypatch.setattr("annotator.storage.retry.time.sleep", lambda s: None)
    path = part_path(str(tmp_path), 0)
    write_part(_records([1]), path, META)
    before = Path(path).read_bytes()
    fs = fsspec.filesystem("file")

    def failing_mv(*a, **kw):
        raise TimeoutError("slow storage")

    monkeypatch.setattr(fs, "mv", failing_mv)
    with pytest.raises(StorageError) as info:  # the storage layer's own error, classified
        write_part(_records([1, 2]), path, META, retries=1)
    assert (info.value.kind, info.value.attempts) == ("transient", 2)
    assert isinstance(info.value.__cause__, TimeoutError) and path in str(info.value)
    assert Path(path).read_bytes() == before  # the old part is intact
    assert sorted(p.name for p in Path(path).parent.iterdir()) == ["part-00000.parquet"]  # tmp removed


def test_retry_helper():
    calls, waits = [], []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("EIO")
        return "ok"

    assert retry(fn, retries=3, backoff_s=0.5, sleep=waits.append) == "ok"
    assert waits == [0.5, 1.0]
    with pytest.raises(FileNotFoundError):
        retry(lambda: (_ for _ in ()).throw(FileNotFoundError("x")), retries=3, sleep=waits.append)
    assert waits == [0.5, 1.0]  # permanent errors are not retried
    assert is_transient_storage_error(ConnectionResetError()) and not is_transient_storage_error(
        PermissionError()
    )
    assert not is_transient_storage_error(ValueError())


def test_s3_round_trip_with_moto(monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for k, v in {
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bkt")
        so = {"client_kwargs": {"endpoint_url": endpoint}, "skip_instance_cache": True}
        out = "s3://bkt/run"
        m = open_output(
            out,
            config_hash="a" * 16,
            listing_fingerprint="b" * 16,
            num_shards=1,
            shard_size=3,
            storage_options=so,
        )
        path = part_path(out, 0)
        digest = write_part(_records([1, 2, 3]), path, META, storage_options=so)
        m.mark_finished(0, path, 3, sha256=digest)
        assert list_parts(out, so) == [path]
        assert [r["image_id"] for r in iter_rows([path], so)] == [1, 2, 3]
        assert read_part_metadata(path, so) == META
        loaded = Manifest.load(out, so)
        assert loaded.finished_shards() == {0} and loaded.is_finished(0)
        fs, root = fsspec.core.url_to_fs(out, **so)
        assert sorted(fs.find(root)) == ["bkt/run/manifest.json", "bkt/run/parts/part-00000.parquet"]
        clear(out, so)
        assert Manifest.load(out, so) is None and list_parts(out, so) == []
    finally:
        server.stop()


def test_part_write_failpoint_goes_through_the_retry_layer(tmp_path, monkeypatch):
    """ANNOTATOR_FAILPOINTS' parts.write fails each write attempt as a real error would:
    a transient one (EIO) is retried, a permanent one (ENOSPC) is a StorageError at once."""
    from annotator import failpoints

    monkeypatch.setattr("annotator.storage.retry.time.sleep", lambda s: None)
    path = part_path(str(tmp_path / "out"), 0)
    try:
        failpoints.configure("parts.write=OSError(EIO):flaky disk*2", tmp_path / "fp1")
        write_part(_records([1]), path, META, retries=3)  # two attempts fail, the third writes
        assert len(list((tmp_path / "fp1").iterdir())) == 2 and Path(path).exists()
        failpoints.configure("parts.write=OSError(ENOSPC):disk full*1", tmp_path / "fp2")
        with pytest.raises(StorageError) as info:
            write_part(_records([1, 2]), path, META, retries=3)
        assert info.value.kind == "permanent" and info.value.attempts == 1 and "disk full" in str(info.value)
    finally:
        failpoints.configure(os.environ.get(failpoints.ENV))  # back to what the environment says
