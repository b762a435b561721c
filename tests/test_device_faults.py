"""Device faults during a run (issue 21.1), with failpoints and a real local Ray: an
out-of-memory or a CUDA error from the engine's batch forward fails the shard's attempt,
not its images, and the run's output is the one an uninterrupted run gives.

The failpoint ``engine.forward`` (annotator.failpoints) raises in the actors, counted
across the whole run; each test arms it with a fresh state folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotator import failpoints
from annotator.run import main
from tests.synthetic import write_dataset, write_vocab
from tests.test_faults import N_IMAGES, Dataset, assert_same_output, read_output

SIZE_HW = (48, 64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    root = tmp_path_factory.mktemp("device-faults")
    images, gt, _ = write_dataset(root, N_IMAGES, size_hw=SIZE_HW, nested=False)
    return Dataset(root, images, gt, write_vocab(root / "v.txt"))


@pytest.fixture(scope="module")
def reference(dataset, ray_session, tmp_path_factory) -> Path:
    """An uninterrupted run with one actor, no failpoint."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(dataset.argv(out, "--num-actors", "1")) == 0
    return out


@pytest.fixture
def arm(tmp_path):
    """``arm(spec)``: failpoints on in this driver and (through runtime_env) in its actors."""
    def _arm(spec: str | None) -> None:
        failpoints.configure(spec, tmp_path / "failpoint-state" if spec else None)

    yield _arm
    failpoints.configure(None)


def _all_part_rows(output: Path) -> list[dict]:
    return [row for p in sorted((output / "parts").glob("part-*.parquet")) for row in pq.read_table(p).to_pylist()]


def test_two_out_of_memory_errors_cost_no_image(dataset, reference, arm, tmp_path):
    """(a) The first two batches of the run raise torch's CUDA out-of-memory: both shards'
    attempts run again, the output is the uninterrupted run's, no error row, and
    scheduling.json counts the two retried attempts."""
    arm("engine.forward=torch.cuda.OutOfMemoryError:CUDA out of memory. Tried to allocate 2.00 GiB*2")
    out = tmp_path / "out"
    assert main(dataset.argv(out, "--num-actors", "2")) == 0
    assert sorted(p.name for p in (tmp_path / "failpoint-state").iterdir()) == ["engine.forward.0", "engine.forward.1"]
    assert_same_output(out, reference)
    rows, _ = read_output(out)
    assert all(r["status"] == "ok" for r in rows)
    scheduling = json.loads((out / "scheduling.json").read_text())
    assert scheduling["device_faults"] == 2 and scheduling["retries"] >= 2, scheduling
    manifest = json.loads((out / "manifest.json").read_text())
    attempts = sorted(e["made_by"]["attempt"] for e in manifest["finished"].values())
    assert sum(attempts) >= 1 and all(e["made_by"]["node_id"] for e in manifest["finished"].values())


def test_a_device_failing_for_a_while_retires_actors_and_leaves_no_error_row(dataset, reference, arm, tmp_path,
                                                                           caplog):
    """(b) Every forward fails with a CUDA error, more times than one actor's budget of
    device faults: the actors whose device keeps failing are retired, the shards they
    could not run are reported (exit 2) with NO part of error rows; once the device is
    back the same command completes, every row ok, as the uninterrupted run."""
    from annotator.distributed.policy import MAX_DEVICE_FAULTS

    arm(f"engine.forward=RuntimeError:CUDA error: an illegal memory access was encountered*{40 * MAX_DEVICE_FAULTS}")
    out = tmp_path / "out"
    with caplog.at_level("ERROR"):
        rc = main(dataset.argv(out, "--num-actors", "2"))
    assert rc == 2
    assert "its device failed" in caplog.text  # retired, as an actor that does not come back
    assert all(r["status"] == "ok" for r in _all_part_rows(out))  # no permanent error row was written
    arm(None)  # the device is back
    assert main(dataset.argv(out, "--num-actors", "2")) == 0
    assert_same_output(out, reference)
    assert all(r["status"] == "ok" for r in read_output(out)[0])
