"""The encoder micro-benchmark runs and reports what it encoded (no timed assertions)."""

import json

import pytest

from benchmarks.encode import main, prediction


def test_encode_bench_reports_both_encoders(tmp_path, capsys):
    out = tmp_path / "encode.json"
    assert main(["--repeats", "1", "--rounds", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["size_hw"] == [375, 500] and r["classes_present"] == 3 and r["vocabulary_size"] == 21
    assert r["annotations_from_labels_ms"] > 0 and r["encode_confidence_png_ms"] > 0
    assert "annotations_from_labels" in capsys.readouterr().out


def test_prediction_has_three_classes_on_background():
    labels, conf = prediction((60, 80), 21)
    assert labels.shape == conf.shape == (60, 80) and set(labels.ravel().tolist()) == {0, 1, 2, 3}
    assert 0 <= conf.min() and conf.max() < 1


def test_encode_bench_refuses_a_bad_size():
    with pytest.raises(SystemExit):
        main(["--size", "375x500"])
