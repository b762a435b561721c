"""Complete or told (issue 22.4): an export of a run that is incomplete (interrupted,
failed shards, still being written) is refused, exit 2, saying how many listed images
have no row, unless ``--partial`` is given, and then the summary says it."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from annotator.export import EXPORTERS, IncompleteRunError, export
from annotator.export.__main__ import main
from annotator.export.completeness import check_run, live_lease
from annotator.storage import parts
from annotator.storage.layout import LOCK_NAME
from tests.export.conftest import build_toy_run_output

FORMATS = sorted(f for f, e in EXPORTERS.items() if e.writes_folder and not e.extras)


@pytest.fixture
def killed_run(tmp_path):
    """A real toy run (6 images in 2 shards) whose second part is gone and whose merge
    was never written: what a run killed after its first shard leaves."""
    output, _, _ = build_toy_run_output(tmp_path)
    (Path(output) / "annotations.parquet").unlink()
    found = parts.list_parts(output)
    Path(found[-1]).unlink()
    return output


def test_a_killed_run_is_refused_by_every_format(killed_run, tmp_path, capsys):
    for fmt in FORMATS:
        to = tmp_path / "exports" / fmt
        assert main([killed_run, "--format", fmt, "--to", str(to)]) == 2, fmt
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "2 of 6 listed images have no row" in err[0] and "--partial" in err[0], err
        assert not to.exists() and not list((tmp_path / "exports").glob(".*"))


def test_partial_exports_what_is_there_and_says_what_is_missing(killed_run, tmp_path, capsys):
    to = tmp_path / "coco"
    assert main([killed_run, "--format", "coco", "--to", str(to), "--partial"]) == 0
    out = capsys.readouterr().out
    assert "images=4" in out and "partial: 2 of 6 listed images have no row" in out.splitlines()[0]


def test_the_manifest_listing_counts(tmp_path, synthetic_output):
    """A run whose manifest lists more images than its parts hold (shards never done)."""
    from annotator.storage.manifest import Manifest

    output, _, _ = synthetic_output
    Manifest.create(output, "0123456789abcdef", "fedcba9876543210", num_shards=4, shard_size=3, num_images=11)
    with pytest.raises(IncompleteRunError, match="5 of 11 listed images have no row"):
        export(output, "masks", str(tmp_path / "m"))
    state = check_run(output, partial=True)
    assert (state.listed, state.rows, state.missing) == (11, 6, 5)


def test_a_complete_run_exports_without_a_word(tmp_path, capsys):
    output, _, _ = build_toy_run_output(tmp_path)
    assert main([output, "--format", "masks", "--to", str(tmp_path / "m")]) == 0
    printed = capsys.readouterr()
    assert "partial" not in printed.out and printed.err == ""


def test_a_run_being_written_is_refused(tmp_path, synthetic_output, capsys):
    from annotator.storage.lock import OutputLock

    output, _, _ = synthetic_output
    with OutputLock(output, what="run"):
        assert main([output, "--format", "masks", "--to", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err
        assert "is being written by run by" in err and "--partial" in err and len(err.strip().splitlines()) == 1
        assert main([output, "--format", "masks", "--to", str(tmp_path / "m"), "--partial"]) == 0
    assert main([output, "--format", "masks", "--to", str(tmp_path / "m")]) == 0


@pytest.mark.parametrize("doc", [
    b'{"holder": "run", "heartbeat": 0}',  # stale
    b'{"holder": "run", "heartbeat": %d}' % (time.time() + 365 * 86400),  # from the future
    b'["not", "a", "lease"]',
    b'{"holder": "run", "heartbeat": "soon"}',
    b"{half-written",
], ids=["stale", "future", "list", "text-heartbeat", "garbage"])
def test_an_old_style_lease_that_is_not_live_does_not_block(doc, synthetic_output):
    output, _, _ = synthetic_output
    (Path(output) / LOCK_NAME).write_bytes(doc)
    assert live_lease(output) is None


def test_an_old_style_lease_of_a_dead_process_does_not_block(synthetic_output):
    import json
    import subprocess
    import sys

    output, _, _ = synthetic_output
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(child.stdout)
    (Path(output) / LOCK_NAME).write_text(json.dumps({"holder": "run", "heartbeat": time.time(),
                                                      "host": socket.gethostname(), "pid": dead}))
    assert live_lease(output) is None
    (Path(output) / LOCK_NAME).write_text(json.dumps({"holder": "run", "heartbeat": time.time(),
                                                      "host": socket.gethostname(), "pid": os.getpid()}))
    assert "run" in live_lease(output)
