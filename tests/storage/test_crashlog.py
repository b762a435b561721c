"""The crash log of a shard retried carefully: deaths counted per image, skipped at two."""

from __future__ import annotations

import json

from annotator.storage.crashlog import DEATHS_TO_SKIP, CrashLog, shards_with_logs
from annotator.storage.parts import part_path, write_part
from tests.part_records import META, make_records


def _doc(tmp_path, shard=3):
    return json.loads((tmp_path / "parts" / f".crashlog-{shard:05d}.json").read_text())


def test_deaths_are_counted_and_an_image_is_skipped_at_the_second(tmp_path):
    out = str(tmp_path)
    log = CrashLog.open(out, 3)  # first careful attempt: nothing known yet
    assert log.deaths == {} and log.crashed == []
    assert _doc(tmp_path) == {"shard_index": 3, "deaths": {}, "current": None}
    read = log.wrap(lambda item: f"bytes of {item}", lambda item: item)
    assert read("a.jpg") == "bytes of a.jpg"
    assert _doc(tmp_path)["current"] == "a.jpg"  # named before it is read
    read("b.jpg")  # ... the process dies here

    log = CrashLog.open(out, 3)
    assert log.deaths == {"b.jpg": 1} and log.crashed == []  # once may be bad luck
    assert _doc(tmp_path)["current"] is None
    log.wrap(lambda item: None, lambda item: item)("b.jpg")  # dies on it again

    log = CrashLog.open(out, 3)
    assert DEATHS_TO_SKIP == 2 and log.deaths == {"b.jpg": 2} and log.crashed == ["b.jpg"]
    assert shards_with_logs(out) == {3}
    log.remove()
    assert shards_with_logs(out) == set()
    log.remove()  # twice is fine


def test_shards_with_logs_ignores_parts_and_other_files(tmp_path):
    out = str(tmp_path)
    assert shards_with_logs(out) == set()  # no parts folder yet
    write_part(make_records([1, 2]), part_path(out, 0), META)
    (tmp_path / "parts" / ".crashlog-00007.json").write_text("{}")
    (tmp_path / "parts" / "notes.json").write_text("{}")
    (tmp_path / "parts" / ".crashlog-7.json").write_text("{}")  # not the writer's name
    assert shards_with_logs(out) == {7}


def test_an_unreadable_log_starts_afresh(tmp_path, caplog):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / ".crashlog-00003.json").write_text("{not json")
    log = CrashLog.open(str(tmp_path), 3)
    assert log.deaths == {} and "unreadable crash log" in caplog.text
    assert _doc(tmp_path) == {"shard_index": 3, "deaths": {}, "current": None}
