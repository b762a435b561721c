"""The run manifest: hashes, lifecycle, the file's keys, conflicts, clear/open_output."""

from __future__ import annotations

import json

import fsspec
import pytest

from annotator.storage.manifest import (
    Manifest,
    ManifestError,
    OutputConflictError,
    clear,
    config_hash,
    listing_fingerprint,
    open_output,
)
from annotator.storage.parts import list_parts, part_path, write_part
from tests.part_records import META
from tests.part_records import make_records as _records


def test_config_hash_and_fingerprint():
    assert config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 16 and int(config_hash({}), 16) >= 0
    with pytest.raises(TypeError):
        config_hash({"a": object()})
    fp = listing_fingerprint(["a.jpg", "b.jpg"])
    assert fp == listing_fingerprint(iter(["a.jpg", "b.jpg"]))
    assert fp != listing_fingerprint(["b.jpg", "a.jpg"])
    assert listing_fingerprint(["ab", "c"]) != listing_fingerprint(["a", "bc"])
    assert listing_fingerprint([]) != listing_fingerprint([""])


@pytest.mark.parametrize("where", ["local", "memory"])
def test_manifest_lifecycle(tmp_path, mem_output, where):
    output = str(tmp_path / "run") if where == "local" else mem_output
    assert Manifest.load(output) is None
    m = Manifest.create(output, "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", num_shards=3, shard_size=2)
    assert Manifest.load(output) == m
    assert not m.is_finished(0) and m.pending_shards() == [0, 1, 2]

    p1 = part_path(output, 1)
    digest = write_part(_records([3, 4]), p1, META)
    m.mark_finished(1, p1, rows=2)  # digest computed from the file
    loaded = Manifest.load(output)
    assert loaded.finished == {"1": {"path": "parts/part-00001.parquet", "rows": 2, "sha256": digest}}
    assert loaded.is_finished(1) and not loaded.is_finished(0)
    assert loaded.finished_shards() == {1} and loaded.pending_shards() == [0, 2]

    # a deleted part re-runs its shard
    fs, p = fsspec.core.url_to_fs(p1)
    fs.rm(p)
    assert not loaded.is_finished(1) and loaded.pending_shards() == [0, 1, 2]

    with pytest.raises(ValueError):
        loaded.mark_finished(3, p1, rows=1)


def test_manifest_file_is_valid_json_with_the_documented_keys(tmp_path):
    m = Manifest.create(str(tmp_path), "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", 2, 10)
    m.mark_finished(0, part_path(str(tmp_path), 0), 10, sha256="0" * 64)
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert set(doc) == {
        "version",
        "config_hash",
        "listing_fingerprint",
        "num_shards",
        "shard_size",
        "finished",
        "created",
        "updated",
    }
    assert doc["finished"]["0"] == {"path": "parts/part-00000.parquet", "rows": 10, "sha256": "0" * 64}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary left


def test_corrupt_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="--overwrite"):
        Manifest.load(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(ManifestError):
        Manifest.load(str(tmp_path))


def test_check_compatible(tmp_path):
    m = Manifest.create(str(tmp_path), "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", 2, 10)
    assert m.check_compatible("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", overwrite=False)
    with pytest.raises(OutputConflictError) as err:
        m.check_compatible("cccccccccccccccc", "bbbbbbbbbbbbbbbb", overwrite=False)
    msg = str(err.value)
    assert "aaaaaaaaaaaaaaaa" in msg and "cccccccccccccccc" in msg and "--overwrite" in msg
    assert "listing" not in msg
    with pytest.raises(OutputConflictError, match="listing fingerprint bbbbbbbbbbbbbbbb"):
        m.check_compatible("aaaaaaaaaaaaaaaa", "dddddddddddddddd", overwrite=False)
    assert m.check_compatible("cccccccccccccccc", "dddddddddddddddd", overwrite=True) is False
    with pytest.raises(OutputConflictError, match="shard size 10"):
        m.check_compatible("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", shard_size=5)


def test_clear_and_open_output(tmp_path):
    out = str(tmp_path)
    kw = {"config_hash": "a" * 16, "listing_fingerprint": "b" * 16, "num_shards": 2, "shard_size": 2}
    m = open_output(out, **kw)
    write_part(_records([1, 2]), part_path(out, 0), META)
    m.mark_finished(0, part_path(out, 0), 2)
    (tmp_path / "summary.json").write_text("{}")

    resumed = open_output(out, **kw)
    assert resumed.pending_shards() == [1]

    with pytest.raises(OutputConflictError, match="--overwrite"):
        open_output(out, **{**kw, "config_hash": "c" * 16})

    fresh = open_output(out, **{**kw, "config_hash": "c" * 16}, overwrite=True)
    assert fresh.finished == {} and list_parts(out) == [] and fresh.config_hash == "c" * 16
    assert (tmp_path / "summary.json").exists()  # clear only removes parts and the manifest

    clear(out)
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "parts").exists()
    write_part(_records([1]), part_path(out, 0), META)
    with pytest.raises(OutputConflictError, match="no manifest.json"):
        open_output(out, **kw)


def test_throttled_saves_and_flush(tmp_path):
    out = str(tmp_path)
    m = Manifest.create(out, "a" * 16, "b" * 16, 3, 2)
    m.flush_interval_s = 3600.0
    m.mark_finished(0, part_path(out, 0), 2, sha256="0" * 64)
    assert Manifest.load(out).finished == {}  # not saved yet: the last save is too recent
    m.flush()
    assert set(Manifest.load(out).finished) == {"0"}
    saved = (tmp_path / "manifest.json").read_bytes()
    m.flush()  # nothing new: no rewrite
    assert (tmp_path / "manifest.json").read_bytes() == saved


def test_entries_are_validated_when_added(tmp_path):
    m = Manifest.create(str(tmp_path), "a" * 16, "b" * 16, 2, 2)
    with pytest.raises(ValueError, match="shard 0: not a valid manifest entry"):
        m.mark_finished(0, part_path(str(tmp_path), 0), 2, sha256="not-a-digest")
    with pytest.raises(ValueError, match="shard 1"):
        m.mark_finished(1, part_path(str(tmp_path), 1), -1, sha256="0" * 64)
    assert m.finished == {}


def test_unlisted_parts_are_taken_back_only_when_they_belong(tmp_path, caplog):
    out = str(tmp_path)
    m = Manifest.create(out, META["config_hash"], "b" * 16, num_shards=5, shard_size=2)
    meta = {**META, "shard_index": 0}
    digest0 = write_part(_records([1, 2]), part_path(out, 0), meta)  # belongs: taken back
    write_part(_records([3, 4]), part_path(out, 1), {**META, "shard_index": 1, "config_hash": "f" * 16})
    write_part(_records([5]), part_path(out, 2), {**META, "shard_index": 2})  # 1 row, 2 expected
    write_part(_records([6, 7]), part_path(out, 3), {**META, "shard_index": 0})  # another shard's index
    write_part(_records([8, 9]), part_path(out, 7), {**META, "shard_index": 7})  # outside the run
    (tmp_path / "parts" / "part-00004.parquet").write_bytes(b"PAR1 truncated")
    listed = write_part(_records([10, 11]), part_path(out, 4).replace("00004", "00005"), META)
    m.finished["5"] = {"path": "parts/part-00005.parquet", "rows": 2, "sha256": listed}  # already listed

    with caplog.at_level("INFO", logger="annotator.storage.manifest"):
        assert m.adopt_unlisted_parts(lambda i: 2) == [0]
    assert m.finished["0"] == {"path": "parts/part-00000.parquet", "rows": 2, "sha256": digest0}
    assert Manifest.load(out).finished["0"]["sha256"] == digest0  # saved
    text = caplog.text
    assert "part-00001.parquet: not taken back (written by another configuration)" in text
    assert "part-00002.parquet: not taken back (1 rows, expected 2)" in text
    assert "part-00003.parquet: not taken back (written by another configuration)" in text
    assert "part-00007.parquet: not taken back (shard 7 is outside this run's 5 shards)" in text
    assert "part-00004.parquet: not taken back (unreadable" in text
    assert m.adopt_unlisted_parts(lambda i: 2) == []


def test_where_a_part_was_made_is_recorded_and_old_entries_still_load(tmp_path):
    """``made_by`` (issue 21.6): node id, host, actor, pid and attempt, kept through a
    save and a load; an entry without it (an older manifest, a part taken back) loads as
    before; a mistyped one is refused when it is added."""
    output = str(tmp_path)
    m = Manifest.create(output, "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", 2, 10)
    made_by = {"node_id": "ab" * 28, "host": "worker-3", "actor": "cd" * 16, "pid": 4242, "attempt": 1}
    m.mark_finished(0, part_path(output, 0), 10, sha256="0" * 64, made_by=made_by)
    m.mark_finished(1, part_path(output, 1), 10, sha256="1" * 64)  # as an older version wrote it
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["finished"]["0"]["made_by"] == made_by and "made_by" not in doc["finished"]["1"]
    loaded = Manifest.load(output)
    assert loaded.finished["0"]["made_by"] == made_by and "made_by" not in loaded.finished["1"]
    with pytest.raises(ValueError, match="not a valid manifest entry"):
        m.mark_finished(0, part_path(output, 0), 10, sha256="0" * 64, made_by={"attempt": -1})


def test_a_writer_that_lost_its_lease_records_nothing_more(tmp_path, monkeypatch):
    """Every manifest write checks the lease's fence (job.run_job sets it): a writer
    paused past the staleness limit, whose output another writer took over, stops at its
    next manifest write naming the new holder, and its late part is never recorded."""
    from annotator.storage import lock as lock_mod
    from annotator.storage.lock import LeaseLostError, OutputLock

    monkeypatch.setattr(lock_mod, "STALE_S", 0.5)
    output = str(tmp_path / "run")
    first = OutputLock(output, None, what="annotator.run (first)").acquire()
    m = Manifest.create(output, "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", num_shards=2, shard_size=2)
    m.fence = first.check_fence
    p0 = part_path(output, 0)
    write_part(_records([1, 2]), p0, META)
    m.mark_finished(0, p0, rows=2)
    first._stop_heartbeat()  # paused: a stopped VM, a long GC, a partition
    second = OutputLock(output, None, what="annotator.run (second)").acquire()
    p1 = part_path(output, 1)
    write_part(_records([3, 4]), p1, META)  # the late part of the paused writer
    with pytest.raises(LeaseLostError) as info:
        m.mark_finished(1, p1, rows=2)
    assert "annotator.run (second)" in str(info.value) and info.value.exit_code == 2
    assert set(Manifest.load(output).finished) == {"0"}  # the late part is not recorded
    second.release()
    first.release()
